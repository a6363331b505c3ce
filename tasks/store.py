"""The shared catalog store: where the catalog, the registry, claims and progress live in Redis.

Its own module, so that what tasks.api imports (progress, telemetry) can reach the store
without importing tasks.api back; `from tasks.api import catalog_store` keeps working.
"""

from __future__ import annotations

from functools import cache

from tasks.app import app
from tasks.catalog import RedisCatalogStore, plain_url
from tasks.redis_urls import is_redis_url


def catalog_store() -> RedisCatalogStore | None:
    """The shared catalog store: the result backend or broker, whichever is Redis; else none."""
    for url in (plain_url(str(app.conf.result_backend or "")), str(app.conf.broker_url or "")):
        if is_redis_url(url):
            return _store_at(url)
    return None


# One store per URL per process: a call asks for it several times (its claim, its relay, its
# progress), and a new one is a new redis-py client and connection pool each time, ~70 µs of
# CPU before it sends anything (docs/performance.md). A redis-py client is thread-safe and
# renews its connections in a forked child.
@cache
def _store_at(url: str) -> RedisCatalogStore:
    return RedisCatalogStore(url)
