"""What the authorization code flow remembers, in Redis, so that every gateway replica sees it:
registered clients, login requests waiting for their user, authorization codes and refresh
token families. Nothing here decides a grant (gateway/auth/interactive.py does); every record
expires by itself, and every single-use step (a code exchanged, a refresh token rotated) is one
atomic command, so two racing requests cannot both win.

Codes and refresh tokens are stored under their SHA-256, never as themselves: a copy of the
store grants nothing. A code or refresh token used a second time is a stolen one (RFC 9700
4.14.2, 2.2.2): the store remembers the family it started and the caller revokes it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis

from tasks.redisconn import connect_async

PREFIX = "agentful:oauth:"
LOGIN_TTL_S = 600  # a login page left open this long must be started again
CODE_TTL_S = 300  # RFC 6749 4.1.2: short-lived; the SDK's client exchanges it at once
USED_TTL_S = 86_400  # how long a used code or refresh token is remembered as used
MAX_LOGIN_TRIES = 5  # wrong passwords on one login request before it is dropped


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits (RFC 6749 10.10 asks for at least 128)


@dataclass
class Pending:
    """A login request: what /authorize was asked, waiting for the user on the login page."""

    client_id: str
    client_name: str
    redirect_uri: str
    redirect_uri_provided_explicitly: bool
    code_challenge: str
    state: str | None
    scopes: list[str] | None
    resource: str | None
    tries: int = 0


@dataclass
class Grant:
    """What a code or a refresh token stands for: a user's consent to one client."""

    client_id: str
    subject: str
    scopes: list[str]
    roles: list[str]
    family: str
    resource: str | None = None
    # for codes only
    redirect_uri: str = ""
    redirect_uri_provided_explicitly: bool = True
    code_challenge: str = ""
    expires_at: float = field(default=0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Grant:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class GrantStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = PREFIX) -> None:
        self.r, self.p = client, prefix

    @classmethod
    def from_url(cls, url: str) -> GrantStore:
        return cls(connect_async(url, socket_connect_timeout=3, socket_timeout=5))

    # -- clients -------------------------------------------------------------------------------

    async def put_client(self, client_id: str, info: str, ttl_s: float) -> None:
        await self.r.set(f"{self.p}client:{client_id}", info, ex=max(1, int(ttl_s)))

    async def get_client(self, client_id: str, ttl_s: float, *, touch: bool = True) -> bytes | None:
        """The client's record; with `touch`, its unused-expiry started again (GETEX: one command)."""
        key = f"{self.p}client:{client_id}"
        raw = await (self.r.getex(key, ex=max(1, int(ttl_s))) if touch else self.r.get(key))
        return raw if raw is None or isinstance(raw, bytes) else raw.encode()

    async def count_registration(self, issuer: str, source: str) -> int:
        """Registrations at `issuer` from `source` in the current hour, this one counted."""
        key = f"{self.p}registered:{digest(issuer)[:16]}:{source}:{int(time.time() // 3600)}"
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 3700)
            count, _ = await pipe.execute()
        return int(count)

    # -- login requests ------------------------------------------------------------------------

    async def put_pending(self, pending: Pending) -> str:
        request_id = new_token()
        await self.r.set(f"{self.p}login:{digest(request_id)}", json.dumps(asdict(pending)), ex=LOGIN_TTL_S)
        return request_id

    async def get_pending(self, request_id: str) -> Pending | None:
        raw = await self.r.get(f"{self.p}login:{digest(request_id)}")
        return None if raw is None else Pending(**json.loads(raw))

    async def take_pending(self, request_id: str) -> Pending | None:
        """The login request, gone from the store (one answer per request: GETDEL)."""
        raw = await self.r.getdel(f"{self.p}login:{digest(request_id)}")
        return None if raw is None else Pending(**json.loads(raw))

    async def failed_try(self, request_id: str) -> int:
        """Counts a wrong password; the request is dropped after MAX_LOGIN_TRIES. Tries so far."""
        key = f"{self.p}login:{digest(request_id)}"
        raw = await self.r.get(key)
        if raw is None:
            return MAX_LOGIN_TRIES
        pending = Pending(**json.loads(raw))
        pending.tries += 1
        if pending.tries >= MAX_LOGIN_TRIES:
            await self.r.delete(key)
        else:
            await self.r.set(key, json.dumps(asdict(pending)), keepttl=True)
        return pending.tries

    # -- codes ---------------------------------------------------------------------------------

    async def put_code(self, grant: Grant) -> str:
        code = new_token()
        grant.expires_at = time.time() + CODE_TTL_S
        await self.r.set(f"{self.p}code:{digest(code)}", grant.to_json(), ex=CODE_TTL_S)
        return code

    async def get_code(self, code: str) -> tuple[Grant | None, str | None]:
        """(the code's grant, None), or (None, family) for a code that was used already."""
        return await self._lookup("code", code)

    async def _lookup(self, kind: str, secret: str) -> tuple[Grant | None, str | None]:
        key = digest(secret)
        raw, used = await self.r.mget(f"{self.p}{kind}:{key}", f"{self.p}used:{key}")
        if used is not None:
            return None, _text(used)
        return (None if raw is None else Grant.from_json(raw)), None

    async def take_code(self, code: str, family: str) -> bool:
        """Marks the code used (once: SET NX) and deletes it; False if it was used already."""
        key = digest(code)
        if not await self.r.set(f"{self.p}used:{key}", family, nx=True, ex=USED_TTL_S):
            return False
        await self.r.delete(f"{self.p}code:{key}")
        return True

    # -- refresh tokens ------------------------------------------------------------------------

    async def put_refresh(self, grant: Grant, ttl_s: float) -> str:
        """A new refresh token for `grant`, now its family's only live one."""
        token = new_token()
        key = digest(token)
        grant.expires_at = time.time() + ttl_s
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}refresh:{key}", grant.to_json(), ex=max(1, int(ttl_s)))
            pipe.set(f"{self.p}family:{grant.family}", key, ex=max(1, int(ttl_s)))
            await pipe.execute()
        return token

    async def get_refresh(self, token: str) -> tuple[Grant | None, str | None]:
        """(the token's grant, None), or (None, family) for a token that was rotated already."""
        return await self._lookup("refresh", token)

    async def take_refresh(self, token: str) -> Grant | None:
        """The token's grant, the token gone and remembered as used (GETDEL: one wins a race)."""
        key = digest(token)
        raw = await self.r.getdel(f"{self.p}refresh:{key}")
        if raw is None:
            return None
        grant = Grant.from_json(raw)
        await self.r.set(f"{self.p}used:{key}", grant.family, ex=USED_TTL_S)
        return grant

    async def revoke_family(self, family: str) -> bool:
        """Every token of the family dead: its live refresh token deleted. True if one was."""
        live = await self.r.getdel(f"{self.p}family:{family}")
        if live is None:
            return False
        await self.r.delete(f"{self.p}refresh:{_text(live)}")
        return True

    async def family_alive(self, family: str) -> bool:
        return bool(await self.r.exists(f"{self.p}family:{family}"))

    async def close(self) -> None:
        await self.r.aclose()
