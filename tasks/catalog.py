"""The cluster's tool catalog: which servers exist and what tools (with input schemas) they offer.

Workers publish each server's tool list when its session connects; producers read it (cached
for `catalog_cache_s`) to reject a bad call before it is queued. The store is a Redis hash on
the broker (or result backend); with no Redis anywhere (RabbitMQ + rpc://) there is no shared
catalog and calls are checked by the worker alone.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from tasks.errors import BrokerUnavailableError
from tasks.redisconn import connect

CATALOG_KEY = "agentful:catalog"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    # The tool's MCP annotations (readOnlyHint, idempotentHint, destructiveHint, ...), as given.
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def rerun_safe(self) -> bool:
        """The tool says that running a call twice does no harm (read-only or idempotent)."""
        return self.annotations.get("readOnlyHint") is True or self.annotations.get("idempotentHint") is True

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "description": self.description, "input_schema": self.input_schema}
        if self.annotations:
            out["annotations"] = self.annotations
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ToolSpec:
        annotations = raw.get("annotations")
        return cls(
            str(raw["name"]),
            str(raw.get("description") or ""),
            dict(raw.get("input_schema") or {}),
            dict(annotations) if isinstance(annotations, dict) else {},
        )


@dataclass(frozen=True)
class ServerTools:
    """One server's tools as last published by a worker."""

    server: str
    tools: dict[str, ToolSpec]
    worker: str
    published_at_s: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "server": self.server,
                "worker": self.worker,
                "published_at_s": self.published_at_s,
                "tools": [t.to_json() for t in self.tools.values()],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerTools:
        raw = json.loads(text)
        tools = [ToolSpec.from_json(t) for t in raw["tools"]]
        return cls(raw["server"], {t.name: t for t in tools}, raw["worker"], float(raw["published_at_s"]))


class CatalogStore(Protocol):
    def publish(self, entry: ServerTools) -> None: ...

    def load(self) -> dict[str, ServerTools]: ...


class RedisCatalogStore:
    """The catalog in one Redis hash, field per server."""

    def __init__(self, url: str, *, timeout_s: float = 3.0) -> None:
        self.url = url
        self._client = connect(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
        )

    def publish(self, entry: ServerTools) -> None:
        self._client.hset(CATALOG_KEY, entry.server, entry.to_json())

    def load(self) -> dict[str, ServerTools]:
        try:
            raw: dict[bytes, bytes] = self._client.hgetall(CATALOG_KEY)  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read the tool catalog at {_safe(self.url)}: {exc}") from exc
        return {k.decode(): ServerTools.from_json(v) for k, v in raw.items()}


class MemoryCatalogStore:
    """In-process catalog, for unit tests of the validation and for brokers without Redis."""

    def __init__(self) -> None:
        self._entries: dict[str, ServerTools] = {}

    def publish(self, entry: ServerTools) -> None:
        self._entries[entry.server] = entry

    def load(self) -> dict[str, ServerTools]:
        return dict(self._entries)


@dataclass
class CachedCatalog:
    """A store read at most once per `ttl_s`: routing and validation cost no broker round trip."""

    store: CatalogStore
    ttl_s: float
    _entries: dict[str, ServerTools] = field(default_factory=dict)
    _loaded_at_s: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(
        self, *, now_s: float | None = None, refresh: bool = False, max_age_s: float | None = None
    ) -> dict[str, ServerTools]:
        """The entries, reloaded when older than `max_age_s` (default: the ttl) or on `refresh`."""
        now = time.monotonic() if now_s is None else now_s
        limit = self.ttl_s if max_age_s is None else min(max_age_s, self.ttl_s)
        with self._lock:
            if refresh or now - self._loaded_at_s >= limit:
                self._entries = self.store.load()
                self._loaded_at_s = now
            return self._entries


def plain_url(url: str) -> str:
    """A Celery backend URL without its `module:Class+` prefix (celeryconfig's result_backend)."""
    scheme, sep, _ = url.partition("://")
    if sep and "+" in scheme:
        return url.split("+", 1)[1]
    return url


def _safe(url: str) -> str:
    """The URL without its password, for messages (each part of a sentinel:// list)."""
    if ";" in url:
        return ";".join(_safe(part) for part in url.split(";"))
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"  # userinfo ends at the LAST '@', as in urllib


def safe_url(url: str) -> str:
    return _safe(url)
