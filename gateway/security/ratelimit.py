"""Per-client rate limit: a token bucket in Redis, shared by every gateway replica.

Each client has a bucket of `burst` tokens, refilled at `rate` tokens per second; a request takes
one. An empty bucket answers 429 with `Retry-After` (whole seconds until a token is back).

The client is the authenticated client id when the MCP SDK's auth middleware set one
(`scope["user"]`, an `AuthenticatedUser` whose `access_token.client_id` is the OAuth client), else
the peer address. So this middleware goes *inside* the authentication middleware.

Why our own Lua script: the bucket must be read, refilled and taken in one step (two replicas
must not both spend the last token), which in Redis means one script. The well-kept Python rate
limit libraries do windows (`limits`: fixed, moving and sliding window counters) or keep state in
process memory (`aiolimiter`, `pyrate-limiter` without its Redis bucket, which is a leaky list of
timestamps per item, O(burst) memory per client); a token bucket is two numbers per client and
twelve lines of Lua, run through redis-py's `register_script` (EVALSHA, reloaded on NOSCRIPT).
The clock is the Redis server's (`TIME`), so replicas with skewed clocks share one bucket exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Receive, Scope, Send

from tasks.config_gateway import GatewayRateLimitSection
from tasks.errors import ConfigError
from tasks.redisconn import connect_async

log = logging.getLogger("agentful.gateway.ratelimit")

KEY_PREFIX = "agentful:ratelimit:"

# KEYS[1] the client's bucket (a hash: tokens, ts); ARGV rate (tokens/s), burst, cost.
# Returns {allowed 0|1, tokens left, seconds until `cost` tokens are back}, numbers as strings
# (Redis turns a Lua number into an integer).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """RFC 9110 Retry-After: whole seconds, at least 1 (a client must not retry at once)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TokenBucket:
    """The shared buckets: `await take(client)` spends one token of that client's bucket."""

    def __init__(self, client: aioredis.Redis, *, rate: float, burst: int, prefix: str = KEY_PREFIX) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.client = client
        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def key(self, client_key: str) -> str:
        # Hashed: a client id is caller-controlled text of any length; the key stays bounded.
        return self.prefix + hashlib.sha256(client_key.encode()).hexdigest()[:32]

    async def take(self, client_key: str, cost: int = 1) -> Decision:
        raw: Any = await self._script(keys=[self.key(client_key)], args=[self.rate, self.burst, cost])
        allowed, remaining, wait = raw
        return Decision(bool(int(allowed)), float(remaining), float(wait))


def client_key(scope: Scope) -> str:
    """Whom a request counts against: the authenticated client id, else the peer address."""
    user = scope.get("user")
    token = getattr(user, "access_token", None)
    client_id = getattr(token, "client_id", None)
    if client_id:
        return f"client:{client_id}"
    if getattr(user, "is_authenticated", False):
        return f"client:{user.display_name}"  # type: ignore[union-attr]
    peer = scope.get("client")
    return f"peer:{peer[0] if peer else 'unknown'}"


def default_redis_url() -> str:
    """The catalog store's Redis (the result backend or the broker, whichever is Redis)."""
    from tasks.api import catalog_store

    store = catalog_store()
    if store is None:
        raise ConfigError(
            "gateway.rateLimit needs Redis: set gateway.rateLimit.redisUrl (the broker is not Redis)"
        )
    return store.url


class RateLimitMiddleware:
    """ASGI middleware: 429 + Retry-After once a client's bucket is empty.

    Plain ASGI (not Starlette's BaseHTTPMiddleware), so streamed (SSE) responses pass untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        section: GatewayRateLimitSection,
        redis_url: str | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.app = app
        self.section = section
        if bucket is None:
            url = redis_url or section.redis_url or default_redis_url()
            conn = connect_async(url, socket_connect_timeout=2, socket_timeout=2)
            bucket = TokenBucket(conn, rate=section.rate, burst=section.burst)
        self.bucket = bucket
        self._warned_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.section.enabled:
            await self.app(scope, receive, send)
            return
        try:
            decision = await self.bucket.take(client_key(scope))
        except (redis.RedisError, OSError) as exc:
            if not self.section.fail_open:
                await _reply(send, 503, {"error": "rate_limit_unavailable"}, {"retry-after": "1"})
                return
            now = time.monotonic()
            if now - self._warned_at > 30:  # one line per 30 s, not one per request
                self._warned_at = now
                log.warning("rate limit store unreachable, letting requests through: %s", type(exc).__name__)
            await self.app(scope, receive, send)
            return
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        body = {
            "error": "rate_limited",
            "error_description": f"over {self.section.rate:g} requests/s (burst {self.section.burst})",
            "retry_after_s": round(decision.retry_after_s, 3),
        }
        await _reply(send, 429, body, {"retry-after": decision.retry_after_header})


async def _reply(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
