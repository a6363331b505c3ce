"""What beat measures for the cluster gauges: queue depths from the broker, the worker registry."""

from __future__ import annotations

from typing import Any

from tasks.queues import agentful_queues, queue_depths
from tasks.registry import Registry


class ClusterReader:
    """Reads the registry and the broker's queues; used by beat's ClusterCollector at scrape time."""

    def __init__(self, broker_url: str, registry_url: str | None, configured: set[str]) -> None:
        self.broker_url = broker_url
        self.registry = Registry(registry_url) if registry_url else None
        self.configured = configured
        self._alive: dict[str, Any] = {}

    def workers(self) -> tuple[dict[str, Any], list[str]]:
        if self.registry is None:
            return {}, []
        self._alive = self.registry.alive()
        return self._alive, self.registry.dead()

    def depths(self) -> dict[str, int]:
        alive = self.registry.alive() if self.registry is not None else {}
        servers = set(self.configured) | {s for b in alive.values() for s in b.servers}
        return queue_depths(self.broker_url, agentful_queues(servers, alive))
