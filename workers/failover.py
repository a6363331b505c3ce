"""Move a dead worker's calls to live workers within seconds, on Redis/Valkey brokers.

With the Redis transport an unacknowledged message comes back only after the visibility
timeout (an hour here, because tool calls may be long), and calls routed to a worker's own
queue wait there for a consumer that will never return. So liveness comes from heartbeats:
when a worker's heartbeat expires, the first live worker to notice takes a lock and
1. restores every message the dead worker held (the delivery tags it published with its last
   heartbeat, refreshed every 0.2 s while they change) through kombu's own `restore_by_tag`,
   the same code the visibility timeout would run, only now;
2. moves everything in the dead worker's own queue `worker.<node>` to the shared queue of the
   call's server `mcp.<server>`, oldest first, where any live worker takes it.
RabbitMQ needs none of this for held calls: it requeues a dead consumer's messages itself.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import redis
from kombu.connection import Connection

from tasks.queues import SERVER_HEADER
from tasks.registry import ENTRY_PREFIX, WORKERS_KEY, worker_queue
from tasks.routing import CONTROL_QUEUE, server_queue

log = logging.getLogger(__name__)
HELD_PREFIX = "agentful:held:"
LOCK_PREFIX = "agentful:reap:"


def target_queue(payload: dict[str, Any]) -> str:
    """Where a call from a dead worker's own queue goes: its server's shared queue.

    The server is in the message header SERVER_HEADER (set at publish; readable with message
    signing on, when the body is a signed envelope). A message published before that header
    existed names it in its JSON body. Neither: the control queue, where any worker takes it.
    """
    headers = payload.get("headers") or {}
    server = headers.get(SERVER_HEADER)
    if isinstance(server, str) and server:
        return server_queue(server)
    if headers.get("task") in ("agentful.call_tool", "agentful.list_tools"):
        try:
            body = payload["body"]
            if payload.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            if args and isinstance(args[0], str):
                return server_queue(args[0])
        except (KeyError, ValueError, TypeError, IndexError):
            pass
    return CONTROL_QUEUE


class Reaper:
    def __init__(self, broker_url: str, *, node: str) -> None:
        self.broker_url = broker_url
        self.node = node  # who reaps, for the log
        self._client = redis.Redis.from_url(broker_url, socket_connect_timeout=3, socket_timeout=10)

    def publish_held(self, node: str, tags: list[str], *, ttl_s: float = 86_400) -> None:
        self._client.set(HELD_PREFIX + node, json.dumps(tags), px=int(ttl_s * 1000))

    def reap(self, dead: str) -> tuple[int, int]:
        """Restore and re-route the dead worker's calls; (held restored, queued moved)."""
        if not self._client.set(LOCK_PREFIX + dead, self.node, nx=True, px=30_000):
            return 0, 0  # another worker is on it
        try:
            raw = self._client.get(HELD_PREFIX + dead)
            tags: list[str] = json.loads(raw) if raw else []
            with Connection(self.broker_url) as conn:  # type: ignore[no-untyped-call]
                channel: Any = conn.default_channel
                restored = 0
                for tag in tags:
                    if self._client.hexists(channel.unacked_key, tag):
                        channel.qos.restore_by_tag(tag, leftmost=False)
                        restored += 1
                # The held tags are published every HELD_TICK_S, so a call taken just before the
                # death is not in them. A call taken from the dead worker's own queue names that
                # queue in its unacked entry, and nobody else consumes it: restore those too.
                restored += self._restore_own(channel, worker_queue(dead))
                moved = self._drain(channel, worker_queue(dead))
            pipe = self._client.pipeline(transaction=False)
            pipe.zrem(WORKERS_KEY, dead)
            pipe.delete(HELD_PREFIX + dead, ENTRY_PREFIX + dead)
            pipe.execute()
            if restored or moved:
                log.warning(
                    "worker %s died: %d held calls restored, %d queued calls moved", dead, restored, moved
                )
            return restored, moved
        finally:
            self._client.delete(LOCK_PREFIX + dead)

    def _restore_own(self, channel: Any, queue: str) -> int:
        restored = 0
        for tag, raw in self._client.hscan_iter(channel.unacked_key, count=500):
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, TypeError, IndexError):
                continue
            if routing_key == queue:
                channel.qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag, leftmost=False)
                restored += 1
        return restored

    def _drain(self, channel: Any, queue: str) -> int:
        moved = 0
        for key in [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]:
            while True:
                # The tail (the consuming end) is stable: producers push at the head and nobody
                # consumes a dead worker's queue. Copy the tail to its new queue and drop it in
                # one transaction: a crash in between duplicates a call, never loses one.
                raw = self._client.lindex(key, -1)
                if raw is None:
                    break
                payload = json.loads(raw)
                target = target_queue(payload)
                info = payload.setdefault("properties", {}).setdefault("delivery_info", {})
                info["routing_key"], info["exchange"] = target, ""
                pri = channel._get_message_priority(payload, reverse=False)
                pipe = self._client.pipeline(transaction=True)
                pipe.rpush(channel._q_for_pri(target, pri), json.dumps(payload))
                pipe.rpop(key)
                pipe.execute()
                moved += 1
        return moved
