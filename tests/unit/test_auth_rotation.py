"""The signing key rotation policy (gateway/auth/keys.py): keys and the time in, decision out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gateway.auth.keys import (
    DAY_S,
    DirKeyStore,
    StoredKey,
    plan_rotation,
    rotate,
    signing_key_of,
    verifying_keys,
)
from tasks.config_gateway import GatewayAuthSection

T0 = 1_800_000_000.0
TTL, LEEWAY, ROT = 3600.0, 30.0, 30 * DAY_S


def key(kid: str, created: float, retired: float | None = None) -> StoredKey:
    return StoredKey(kid=kid, alg="ES256", created=created, private_pem="", public_jwk={}, retired=retired)


def plan(keys: list[StoredKey], now: float, force: bool = False) -> tuple[bool, list[str], list[str]]:
    p = plan_rotation(keys, now, rotation_s=ROT, token_ttl_s=TTL, leeway_s=LEEWAY, force=force)
    return p.new_key, p.retire, p.remove


def test_table() -> None:
    a = key("a", T0)
    assert plan([], T0) == (True, [], [])  # no key: make one
    assert plan([a], T0 + ROT - 1) == (False, [], [])
    assert plan([a], T0 + ROT) == (True, ["a"], [])  # 30 days old: replace it
    assert plan([a], T0 + 5, force=True) == (True, ["a"], [])  # `agentful keys rotate`
    old = key("old", T0 - ROT, retired=T0)
    assert plan([old, a], T0 + TTL + LEEWAY - 1) == (False, [], [])  # its tokens may still be alive
    assert plan([old, a], T0 + TTL + LEEWAY) == (False, [], ["old"])  # all expired: remove it


def test_signing_and_verifying_sets() -> None:
    a, b = key("a", T0, retired=T0 + 100), key("b", T0 + 100)
    assert signing_key_of([a, b]) == b
    assert signing_key_of([a]) is None
    assert verifying_keys([a, b], T0 + 100 + TTL, token_ttl_s=TTL, leeway_s=LEEWAY) == [a, b]
    assert verifying_keys([a, b], T0 + 100 + TTL + LEEWAY, token_ttl_s=TTL, leeway_s=LEEWAY) == [b]


def test_rotate_on_a_store(tmp_path: Path) -> None:
    auth = GatewayAuthSection(enabled=True, token_ttl=int(TTL), leeway_s=int(LEEWAY))
    store = DirKeyStore(tmp_path)
    plan1, first = rotate(store, auth, T0)
    assert first is not None and plan1.retire == []
    plan2, none = rotate(store, auth, T0 + DAY_S)  # the daily check: nothing due
    assert none is None and not plan2.retire
    plan3, second = rotate(store, auth, T0 + ROT)
    assert second is not None and plan3.retire == [first.kid]
    keys = {k.kid: k for k in store.load()}
    assert keys[first.kid] == replace(first, retired=T0 + ROT) and keys[second.kid].retired is None
    plan4, _ = rotate(store, auth, T0 + ROT + TTL + LEEWAY)
    assert plan4.remove == [first.kid] and [k.kid for k in store.load()] == [second.kid]
    assert oct((tmp_path / f"{second.kid}.json").stat().st_mode & 0o777) == "0o600"
