"""Signing keys: where they live, how they rotate, and the key ring a process signs and verifies with.

Where: the cluster's Redis (one hash, `agentful:auth:keys`) when the broker or result backend is
Redis or Valkey, else a directory (`<data dir>/keys`, one JSON file per key, mode 0600), or what
`gateway.auth.keyStore` names. Redis is the default because every gateway replica, beat (which
runs the rotation, beat/scheduler.py) and `agentful keys` on any host already reach it; a directory
works for one host or a shared volume. Private keys are PEM, encrypted when `keyPassphraseEnv` names a
variable (cryptography's BestAvailableEncryption), so the store alone does not give them away.

Rotation (pure, `plan_rotation`): the newest key that is not retired signs. It is replaced once it
is `rotationDays` old (or on `agentful keys rotate`): a new key signs and the old one is retired
at that moment. A retired key still verifies until every token it signed has expired (retired +
tokenTtl + leeway), then is removed. `agentful keys remove KID` removes one at once: tokens it
signed are refused from the next key reload on (within `RELOAD_S`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tasks.config_gateway import GatewayAuthSection
from tasks.errors import ConfigError
from tasks.redis_urls import is_redis_url
from tasks.redisconn import connect
from tasks.settings import NO_BROKER_URL, Settings, resolved_broker_url, resolved_result_backend

Alg = Literal["ES256", "RS256"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
REDIS_KEY = "agentful:auth:keys"
RELOAD_S = 5.0  # how long a process trusts its copy of the key set
DAY_S = 86_400.0


@dataclass(frozen=True)
class StoredKey:
    """One key as stored: public JWK, (maybe encrypted) private PEM, its life."""

    kid: str
    alg: str
    created: float
    private_pem: str
    public_jwk: dict[str, Any]
    retired: float | None = None  # when a newer key took over signing

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredKey:
        raw = json.loads(text)
        return cls(**raw)

    def verify_until(self, token_ttl_s: float, leeway_s: float) -> float | None:
        """When the last token it signed expires; None while it still signs."""
        return None if self.retired is None else self.retired + token_ttl_s + leeway_s


# -- rotation policy (pure: keys and the time in, decision out) -----------------------------------


@dataclass(frozen=True)
class RotationPlan:
    new_key: bool
    retire: list[str] = field(default_factory=list)  # stop signing now
    remove: list[str] = field(default_factory=list)  # tokens they signed have all expired


def signing_key_of(keys: list[StoredKey]) -> StoredKey | None:
    """The key that signs: the newest one not retired."""
    live = [k for k in keys if k.retired is None]
    return max(live, key=lambda k: (k.created, k.kid)) if live else None


def plan_rotation(
    keys: list[StoredKey],
    now: float,
    *,
    rotation_s: float,
    token_ttl_s: float,
    leeway_s: float,
    force: bool = False,
) -> RotationPlan:
    current = signing_key_of(keys)
    new_key = force or current is None or now - current.created >= rotation_s
    retire = [k.kid for k in keys if k.retired is None] if new_key else []
    remove = [
        k.kid for k in keys if k.retired is not None and now >= (k.verify_until(token_ttl_s, leeway_s) or now)
    ]
    return RotationPlan(new_key, retire, remove)


def verifying_keys(
    keys: list[StoredKey], now: float, *, token_ttl_s: float, leeway_s: float
) -> list[StoredKey]:
    """The keys a token may be signed with at `now`: signing ones, and retired ones whose tokens
    may still be alive (a removal the store has not done yet changes nothing)."""
    out = []
    for k in keys:
        until = k.verify_until(token_ttl_s, leeway_s)
        if until is None or now < until:
            out.append(k)
    return out


# -- key material ---------------------------------------------------------------------------------


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): the key id, the same wherever it is computed."""
    import base64

    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(private: PrivateKey, alg: str) -> dict[str, Any]:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


def generate_key(alg: Alg, now: float, passphrase: bytes | None) -> StoredKey:
    private: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 3072)
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    jwk = public_jwk(private, alg)
    return StoredKey(kid=jwk["kid"], alg=alg, created=now, private_pem=pem.decode(), public_jwk=jwk)


def load_private(key: StoredKey, passphrase: bytes | None) -> PrivateKey:
    try:
        private = serialization.load_pem_private_key(key.private_pem.encode(), password=passphrase)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"signing key {key.kid}: cannot read its private key ({exc}); is keyPassphraseEnv right?"
        ) from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"signing key {key.kid}: not an EC or RSA key")
    return private


def passphrase_of(auth: GatewayAuthSection) -> bytes | None:
    if auth.key_passphrase_env is None:
        return None
    value = os.environ.get(auth.key_passphrase_env)
    if not value:
        raise ConfigError(
            f"gateway.auth.keyPassphraseEnv: environment variable {auth.key_passphrase_env} is not set"
        )
    return value.encode()


# -- stores ---------------------------------------------------------------------------------------


class KeyStore(Protocol):
    where: str

    def load(self) -> list[StoredKey]: ...
    def put(self, key: StoredKey) -> None: ...
    def remove(self, kid: str) -> bool: ...
    def lock(self) -> contextlib.AbstractContextManager[Any]: ...


class RedisKeyStore:
    def __init__(self, url: str, *, key: str = REDIS_KEY) -> None:
        self._client = connect(url, socket_connect_timeout=3, socket_timeout=5)
        self._key = key
        from tasks.catalog import safe_url

        self.where = f"{safe_url(url)} ({key})"

    def load(self) -> list[StoredKey]:
        raw: dict[bytes, bytes] = self._client.hgetall(self._key)  # type: ignore[assignment]
        return [StoredKey.from_json(v) for v in raw.values()]

    def put(self, key: StoredKey) -> None:
        self._client.hset(self._key, key.kid, key.to_json())

    def remove(self, kid: str) -> bool:
        return bool(self._client.hdel(self._key, kid))

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        # redis-py's own lock: one rotation at a time across every host.
        lock: contextlib.AbstractContextManager[Any] = self._client.lock(
            f"{self._key}:lock", timeout=60, blocking_timeout=30
        )
        return lock

    def close(self) -> None:
        self._client.close()


class DirKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def _ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> list[StoredKey]:
        if not self.path.is_dir():
            return []
        return [StoredKey.from_json(p.read_bytes()) for p in sorted(self.path.glob("*.json"))]

    def put(self, key: StoredKey) -> None:
        self._ensure()
        tmp = self.path / f".{key.kid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key.to_json())
        os.replace(tmp, self.path / f"{key.kid}.json")  # atomic: a reader sees old or new

    def remove(self, kid: str) -> bool:
        try:
            (self.path / f"{kid}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._ensure()
        with (self.path / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def open_key_store(auth: GatewayAuthSection, settings: Settings) -> RedisKeyStore | DirKeyStore:
    """The store `gateway.auth.keyStore` names; unset: the cluster's Redis, else <data dir>/keys."""
    where = auth.key_store
    if where is None:
        broker = resolved_broker_url(settings)
        for url in (resolved_result_backend(settings, broker), broker):
            if is_redis_url(url) and not url.startswith(NO_BROKER_URL):
                return RedisKeyStore(url)
        return DirKeyStore(settings.data_dir / "keys")
    if is_redis_url(where):
        return RedisKeyStore(where)
    return DirKeyStore(Path(where).expanduser())


def rotate(
    store: KeyStore, auth: GatewayAuthSection, now: float, *, force: bool = False
) -> tuple[RotationPlan, StoredKey | None]:
    """Apply the rotation policy to the store, under its lock. Returns the plan and the new key."""
    with store.lock():
        keys = store.load()
        plan = plan_rotation(
            keys,
            now,
            rotation_s=auth.rotation_days * DAY_S,
            token_ttl_s=auth.token_ttl,
            leeway_s=auth.leeway_s,
            force=force,
        )
        new = None
        if plan.new_key:
            new = generate_key(auth.algorithm, now, passphrase_of(auth))
            store.put(new)  # the new key first: there is never a moment with no signing key
        by_kid = {k.kid: k for k in keys}
        for kid in plan.retire:
            store.put(replace(by_kid[kid], retired=now))
        for kid in plan.remove:
            store.remove(kid)
        return plan, new


# -- the key ring a process uses ------------------------------------------------------------------


class KeyRing:
    """The keys of one store as this process sees them: reloaded every RELOAD_S seconds, and at
    once (at most every second) when a token names a kid it does not know."""

    def __init__(
        self, store: KeyStore, auth: GatewayAuthSection, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.auth = auth
        self.clock = clock
        self._keys: list[StoredKey] = []
        self._loaded_at = -1e18
        self._lock = threading.Lock()
        self._private: dict[str, PrivateKey] = {}

    def keys(self, *, reload: bool = False) -> list[StoredKey]:
        now = time.monotonic()
        with self._lock:
            if reload and now - self._loaded_at < 1.0:
                reload = False
            if reload or now - self._loaded_at >= RELOAD_S:
                self._keys = self.store.load()
                self._loaded_at = now
            return list(self._keys)

    def stale(self) -> bool:
        """True if the next keys() reads the store (callers on an event loop do that in a thread)."""
        return time.monotonic() - self._loaded_at >= RELOAD_S

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = -1e18

    def verifying(self) -> list[StoredKey]:
        return verifying_keys(
            self.keys(), self.clock(), token_ttl_s=self.auth.token_ttl, leeway_s=self.auth.leeway_s
        )

    def find(self, kid: str) -> StoredKey | None:
        for reload in (False, True):
            for k in verifying_keys(
                self.keys(reload=reload),
                self.clock(),
                token_ttl_s=self.auth.token_ttl,
                leeway_s=self.auth.leeway_s,
            ):
                if k.kid == kid:
                    return k
        return None

    def signer(self) -> tuple[StoredKey, PrivateKey]:
        """The signing key, made first if the store has none (the first gateway to start)."""
        key = signing_key_of(self.keys())
        if key is None:
            rotate(self.store, self.auth, self.clock())
            self.invalidate()
            key = signing_key_of(self.keys())
            if key is None:  # pragma: no cover - rotate always leaves one
                raise ConfigError(f"no signing key in {self.store.where}")
        private = self._private.get(key.kid)
        if private is None:
            private = self._private[key.kid] = load_private(key, passphrase_of(self.auth))
        return key, private

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.verifying()]}
