"""The per-client rate limit: a token bucket in real Redis (the embedded broker, the catalog's
store), shared by two real gateways; 429 with Retry-After; one bucket per client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis

from gateway.security.ratelimit import RateLimitMiddleware, TokenBucket
from tasks.config_gateway import GatewayRateLimitSection
from tests.conftest import free_port
from tests.gateway.conftest import RunningGateway

pytestmark = pytest.mark.integration

# One token every 5 s: a bucket emptied in a test stays empty for the test's few requests.
SLOW = {"enabled": True, "rate": 0.2, "burst": 3}


def bucket(url: str, *, rate: float, burst: int) -> TokenBucket:
    client = aioredis.Redis.from_url(url)
    return TokenBucket(client, rate=rate, burst=burst, prefix=f"test:ratelimit:{uuid.uuid4().hex[:8]}:")


# --- the bucket in Redis ----------------------------------------------------------------------


def test_bucket_allows_burst_then_refuses_with_retry_after(broker: str) -> None:
    async def run() -> list[Any]:
        b = bucket(broker, rate=0.5, burst=3)
        try:
            return [await b.take("client:a") for _ in range(4)] + [await b.take("client:b")]
        finally:
            await b.client.aclose()

    decisions = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True, True, True, False, True]
    refused = decisions[3]
    assert 0 < refused.retry_after_s <= 2.0  # one token at 0.5/s is at most 2 s away
    assert refused.retry_after_header in {"1", "2"}
    assert decisions[2].remaining < 1 <= decisions[0].remaining


def test_bucket_refills(broker: str) -> None:
    async def run() -> tuple[bool, bool, bool]:
        b = bucket(broker, rate=20, burst=1)
        try:
            first, second = await b.take("c"), await b.take("c")
            await asyncio.sleep(second.retry_after_s + 0.05)  # wait as told, then a token is back
            return first.allowed, second.allowed, (await b.take("c")).allowed
        finally:
            await b.client.aclose()

    assert asyncio.run(run()) == (True, False, True)


def test_bucket_is_atomic_under_concurrency(broker: str) -> None:
    """40 takes at once against a bucket of 10 (refilling ~never): exactly 10 pass."""

    async def run() -> int:
        b = bucket(broker, rate=0.0001, burst=10)
        clients = [aioredis.Redis.from_url(broker) for _ in range(4)]  # several connections, as replicas
        try:
            buckets = [TokenBucket(c, rate=b.rate, burst=b.burst, prefix=b.prefix) for c in clients]
            results = await asyncio.gather(*(buckets[i % 4].take("shared") for i in range(40)))
            return sum(d.allowed for d in results)
        finally:
            for c in [b.client, *clients]:
                await c.aclose()

    assert asyncio.run(run()) == 10


def test_bucket_rejects_nonsense_limits(broker: str) -> None:
    client = aioredis.Redis.from_url(broker)
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(client, rate=0, burst=1)
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket(client, rate=1, burst=0)


# --- the middleware when Redis is down --------------------------------------------------------


async def _asgi_get(app: Any) -> tuple[int, dict[str, str]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("10.9.9.9", 1)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start.get("headers", [])}


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(("fail_open", "status"), [(True, 204), (False, 503)])
def test_redis_down_fails_open_or_closed(fail_open: bool, status: int) -> None:
    section = GatewayRateLimitSection(enabled=True, fail_open=fail_open)
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def run() -> tuple[int, dict[str, str]]:
        app = RateLimitMiddleware(_ok, section=section, redis_url=down)
        try:
            return await _asgi_get(app)
        finally:
            await app.bucket.client.aclose()

    got, headers = asyncio.run(run())
    assert got == status
    if status == 503:
        assert headers["retry-after"] == "1"


# --- real gateways ----------------------------------------------------------------------------


def get(gw: RunningGateway, peer: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    """GET /healthz from source address `peer` (any 127.x.y.z reaches the loopback gateway)."""
    transport = httpx2.HTTPTransport(local_address=peer)
    with httpx2.Client(transport=transport, timeout=10) as client:
        return client.get(f"{gw.base}/healthz", headers=headers or {})


@pytest.fixture(scope="module")
def limited_pair(gateway_factory: Callable[..., RunningGateway]) -> tuple[RunningGateway, RunningGateway]:
    """Two gateway replicas, one rate limit (in the catalog's Redis: no redisUrl given)."""
    return gateway_factory({"rateLimit": SLOW}), gateway_factory({"rateLimit": SLOW})


def test_two_gateways_share_one_bucket(limited_pair: tuple[RunningGateway, RunningGateway]) -> None:
    a, b = limited_pair
    peer = "127.0.0.3"
    assert [get(a, peer).status_code for _ in range(3)] == [200, 200, 200]
    refused = get(b, peer)  # the other replica: the same, now empty, bucket
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["error"] == "rate_limited" and body["retry_after_s"] > 0
    assert get(a, peer).status_code == 429
    # Another peer has its own bucket, on either replica.
    assert get(b, "127.0.0.4").status_code == 200


def test_the_mcp_endpoint_answers_429(limited_pair: tuple[RunningGateway, RunningGateway]) -> None:
    a, _ = limited_pair
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    transport = httpx2.HTTPTransport(local_address="127.0.0.5")
    hdrs = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with httpx2.Client(transport=transport, timeout=30) as client:
        codes = [client.post(a.url, json=ping, headers=hdrs).status_code for _ in range(4)]
    assert codes[3] == 429 and 429 not in codes[:3], codes
    # The gateway keeps serving everyone else.
    assert get(a, "127.0.0.6").status_code == 200


def test_buckets_are_per_oauth_client(gateway_factory: Callable[..., RunningGateway]) -> None:
    """With auth on, the bucket is the token's client: alpha's empty bucket does not stop beta,
    though both call from the same address."""
    from gateway.auth.passwords import hash_secret

    secrets = {"alpha": "alpha-" + uuid.uuid4().hex, "beta": "beta-" + uuid.uuid4().hex}
    auth = {
        "enabled": True,
        "roles": {"caller": ["tools:call:*"]},
        "clients": {name: {"secretHash": hash_secret(s), "roles": ["caller"]} for name, s in secrets.items()},
    }
    gw = gateway_factory({"auth": auth, "rateLimit": {"enabled": True, "rate": 0.2, "burst": 2}})

    def token(name: str, peer: str) -> str:
        transport = httpx2.HTTPTransport(local_address=peer)
        with httpx2.Client(transport=transport, timeout=30) as client:
            form = {"grant_type": "client_credentials", "client_id": name, "client_secret": secrets[name]}
            response = client.post(f"{gw.base}/token", data=form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    # Tokens fetched from their own addresses: those requests count against those peers.
    alpha = {"authorization": f"Bearer {token('alpha', '127.0.0.7')}"}
    beta = {"authorization": f"Bearer {token('beta', '127.0.0.8')}"}
    peer = "127.0.0.9"
    assert [get(gw, peer, alpha).status_code for _ in range(3)] == [200, 200, 429]
    assert get(gw, peer, beta).status_code == 200
    # Without a token the same address is its own (peer) bucket.
    assert get(gw, peer).status_code == 200
