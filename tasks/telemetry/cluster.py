"""What beat measures for the cluster gauges: queue depths from the broker, the worker registry."""

from __future__ import annotations

import contextlib
from typing import Any

from tasks.registry import Registry, worker_queue
from tasks.routing import CONTROL_QUEUE, server_queue

# kombu keeps a Redis queue of priority band N (N > 0) in the list `<queue>\x06\x16<N>`; the
# bands are kombu's default priority_steps (celeryconfig keeps them, see its comment).
_PRIORITY_SEP = "\x06\x16"
_BANDS = (3, 6, 9)


def redis_depths(client: Any, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, every priority band counted (one pipeline round trip)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
        for band in _BANDS:
            pipe.llen(f"{q}{_PRIORITY_SEP}{band}")
    counts = [int(n) for n in pipe.execute()]
    width = 1 + len(_BANDS)
    return {q: sum(counts[i * width : (i + 1) * width]) for i, q in enumerate(queues)}


def amqp_depths(connection: Any, queues: list[str]) -> dict[str, int]:
    """Messages ready in each queue on RabbitMQ (a passive declare; a missing queue is 0)."""
    out: dict[str, int] = {}
    for q in queues:
        channel = connection.channel()
        try:
            out[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
        except Exception:  # NOT_FOUND closes the channel: the queue was never declared
            out[q] = 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return out


def agentful_queues(servers: set[str], nodes: set[str]) -> list[str]:
    shared = [server_queue(s) for s in sorted(servers)]
    return [CONTROL_QUEUE, *shared, *(worker_queue(n) for n in sorted(nodes))]


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
        queues = agentful_queues(servers, set(alive))
        if self.broker_url.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=3, socket_timeout=5)
            try:
                return redis_depths(client, queues)
            finally:
                client.close()
        from kombu.connection import Connection

        with Connection(self.broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            return amqp_depths(conn, queues)
