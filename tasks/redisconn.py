"""One way to open a redis-py client on a cluster URL: a single server, or a primary through Sentinel.

Every client of ours (catalog, registry, claims, progress, failover, autoscaler, gateway) opens
its connection here, so a `sentinel://` broker works everywhere the plain `redis://` one does:
the client asks the Sentinels which node is the primary now, and asks again after every
reconnect, so it follows a failover by itself (redis-py's `Sentinel.master_for`). TCP keepalive
(tasks/redis_urls.py KEEPALIVE_OPTIONS) makes a connection to a host that vanished fail in
seconds, so that reconnect happens.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tasks.redis_urls import KEEPALIVE_OPTIONS, is_sentinel_url, sentinel_parts
from tasks.settings import get_settings

# How a client talks to the Sentinels themselves. A dead Sentinel (its host gone, its packets
# dropped) costs one short connect timeout and no retry: redis-py asks the Sentinels in turn on
# every new connection until one names a healthy primary, and its default of three retries with
# backoff made each lookup wait ~14 s on a dead first Sentinel (workers stalled over a minute
# after their broker host died, in tests/hosts/test_sentinel.py). Sentinels are on the same
# network: a second is ample for a connect, two for an answer.
SENTINEL_NODE_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "socket_keepalive": True,
    "socket_keepalive_options": KEEPALIVE_OPTIONS,
    "retry": Retry(NoBackoff(), 0),
}
_managers: dict[tuple[object, ...], Any] = {}
_managers_lock = threading.Lock()


def _keepalive(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if url.startswith("unix://"):
        return kwargs
    return {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS, **kwargs}


def sentinel_node_options() -> dict[str, Any]:
    """SENTINEL_NODE_OPTIONS with the Sentinels' own password (AGENTFUL_SENTINEL_PASSWORD)."""
    password = get_settings().sentinel_password
    extra = {"password": password.get_secret_value()} if password is not None else {}
    return {**SENTINEL_NODE_OPTIONS, **extra}


def _manager(nodes: list[tuple[str, int]], asynchronous: bool) -> Any:
    """One Sentinel manager per set of nodes in a process: it keeps the Sentinel that answered
    last at the front of its list, so only the first lookup after a host dies pays for it."""
    key = (tuple(nodes), asynchronous)
    with _managers_lock:
        manager = _managers.get(key)
        if manager is None:
            options = sentinel_node_options()
            if asynchronous:
                options["retry"] = AsyncRetry(NoBackoff(), 0)
                manager = AsyncSentinel(nodes, sentinel_kwargs=options)
            else:
                manager = Sentinel(nodes, sentinel_kwargs=options)
            _managers[key] = manager
        return manager


def _primary(url: str, asynchronous: bool, kwargs: dict[str, Any]) -> Any:
    """The client of the primary the Sentinels of `url` name (asked again on each connection)."""
    nodes, primary = sentinel_parts(url)
    options: dict[str, Any] = {**primary, **kwargs}
    return _manager(nodes, asynchronous).master_for(get_settings().sentinel_master, **options)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client of the Redis at `url` (redis://, rediss://, unix://, sentinel://a;sentinel://b)."""
    kwargs = _keepalive(url, kwargs)
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    return cast("redis.Redis", _primary(url, False, kwargs))


def connect_async(url: str, **kwargs: Any) -> aioredis.Redis:
    """The asyncio client of the same (the gateway's)."""
    kwargs = _keepalive(url, kwargs)
    if not is_sentinel_url(url):
        return aioredis.Redis.from_url(url, **kwargs)
    return cast("aioredis.Redis", _primary(url, True, kwargs))
