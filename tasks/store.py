"""The shared catalog store: where the catalog, the registry, claims and progress live in Redis.

Its own module, so that what tasks.api imports (progress, telemetry) can reach the store
without importing tasks.api back; `from tasks.api import catalog_store` keeps working.
"""

from __future__ import annotations

from tasks.app import app
from tasks.catalog import RedisCatalogStore, plain_url
from tasks.redis_urls import is_redis_url


def catalog_store() -> RedisCatalogStore | None:
    """The shared catalog store: the result backend or broker, whichever is Redis; else none."""
    for url in (plain_url(str(app.conf.result_backend or "")), str(app.conf.broker_url or "")):
        if is_redis_url(url):
            return RedisCatalogStore(url)
    return None
