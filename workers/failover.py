"""Move a dead worker's calls to live workers within seconds.

Liveness comes from heartbeats (workers/heartbeat.py): every worker incarnation beats every
`heartbeat_s` into the registry, on the store's clock. An incarnation is declared dead when its
last beat is older than the expiry (two missed beats and a second), or, sooner, when its beat is
half a beat late and none of its process's Redis connections is open any more (a crashed or
killed process: the kernel closed them; a paused or cut-off one still has them, and waits out
the expiry). The first live worker to see it takes a lock and:
1. fences it (tasks/delivery/claims.py): from now on it takes, acknowledges and stores nothing,
   so a worker that was only paused cannot act on calls that have moved on;
2. if no other incarnation of its node lives, moves its own queue `worker.<node>`, in order, to
   the front of the shared queue of each call's server, where any live worker takes it;
3. restores everything in its unacked hash, where the atomic take put every message it took
   (tasks/delivery/transport.py), in front of those: the calls it ran and the ones it had
   prefetched, exactly, next to be taken.
A worker only judges others once it has itself been in contact with the store for an expiry: a
broker that comes back after a restart finds every heartbeat old, and must not see a massacre.
RabbitMQ requeues a dead consumer's messages itself; the fence and the claims still apply.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Collection
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel

from tasks.delivery import keys
from tasks.delivery.claims import fence
from tasks.queues import SERVER_HEADER
from tasks.registry import ENTRY_PREFIX, WORKERS_KEY, Registry, worker_queue
from tasks.routing import CONTROL_QUEUE, server_queue

log = logging.getLogger(__name__)
LOCK_PREFIX = "agentful:reap:"
_SEP: str = RedisChannel.sep


def client_name(node: str, pid: int | str) -> str:
    """The name every Redis connection of a worker process carries (CLIENT SETNAME)."""
    return f"agentful:{node}:{pid}".replace(" ", "_")


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


def list_key(queue: str, payload: dict[str, Any]) -> str:
    """The Redis list of `queue` that holds `payload`: kombu's band for its priority."""
    try:
        priority = max(0, min(int(payload["properties"]["priority"]), 9))
    except (KeyError, TypeError, ValueError):
        priority = 0
    band = max(step for step in PRIORITY_STEPS if step <= priority)
    return f"{queue}{_SEP}{band}" if band else queue


def _push(pipe: Any, queue: str, payload: dict[str, Any], *, front: bool) -> None:
    """Queue a message (front: next to be taken) and ring its queue's doorbell."""
    data = json.dumps(payload)
    (pipe.rpush if front else pipe.lpush)(list_key(queue, payload), data)
    pipe.lpush(keys.bell(queue), 1)
    pipe.ltrim(keys.bell(queue), 0, keys.BELL_CAP - 1)


def restore_unacked(
    broker: redis.Redis,
    incarnation: str,
    *,
    exclude: Collection[str] = (),
    retarget: Callable[[str, dict[str, Any]], str] | None = None,
) -> int:
    """Put back every message `incarnation` took and has not acknowledged (but `exclude`) at
    the front of its queue, in one transaction; returns how many. A worker that dies halfway
    leaves the hash as it was: restoring twice cannot happen, losing cannot either."""
    unacked, index = keys.unacked(incarnation), keys.unacked_index(incarnation)
    with broker.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(unacked)
                raw: dict[Any, Any] = pipe.hgetall(unacked)
                pipe.multi()
                count = 0
                for tag_b, entry in raw.items():
                    tag = tag_b.decode() if isinstance(tag_b, bytes) else str(tag_b)
                    if tag in exclude:
                        continue
                    try:
                        payload, exchange, routing_key = json.loads(entry)
                    except (ValueError, TypeError):
                        log.error("unacked entry %s of %s is not a message; dropped", tag, incarnation)
                        pipe.hdel(unacked, tag)
                        continue
                    queue = routing_key or exchange or CONTROL_QUEUE
                    if retarget is not None:
                        queue = retarget(queue, payload)
                    payload.setdefault("headers", {})["redelivered"] = True
                    info = payload.setdefault("properties", {}).setdefault("delivery_info", {})
                    info.update(exchange="", routing_key=queue, redelivered=True)
                    _push(pipe, queue, payload, front=True)
                    pipe.hdel(unacked, tag)
                    pipe.zrem(index, tag)
                    count += 1
                pipe.execute()
                return count
            except redis.WatchError:
                continue


def drain_queue(broker: redis.Redis, queue: str) -> int:
    """Move every message of a dead worker's own queue to the front of its server's shared
    queue, in their order: they were queued before anything that queue holds now."""
    moved = 0
    for key in [list_key(queue, {"properties": {"priority": p}}) for p in PRIORITY_STEPS]:
        with broker.pipeline(transaction=True) as pipe:
            while True:
                # The newest (the head) first: each goes to the front, so the oldest ends up
                # next to be taken. A producer may still push at the head: WATCH, and look again
                # if it did. Copy and drop in one transaction: nothing is lost, nor run twice.
                try:
                    pipe.watch(key)
                    raw = pipe.lindex(key, 0)
                    if raw is None:
                        break
                    payload = json.loads(raw)
                    target = target_queue(payload)
                    info = payload.setdefault("properties", {}).setdefault("delivery_info", {})
                    info["routing_key"], info["exchange"] = target, ""
                    pipe.multi()
                    _push(pipe, target, payload, front=True)
                    pipe.lpop(key)
                    pipe.execute()
                    moved += 1
                except redis.WatchError:
                    continue
    return moved


def drain_amqp_queue(broker_url: str, queue: str) -> int:
    """RabbitMQ: move a dead worker's own queue to the servers' shared queues. Each message is
    published (with publisher confirms) before it is acknowledged: a crash in between leaves a
    copy, which its claim stops from running twice."""
    from kombu.connection import Connection
    from kombu.entity import Exchange
    from kombu.entity import Queue as KQueue
    from kombu.messaging import Producer

    moved = 0
    with Connection(broker_url, connect_timeout=3, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors:
            return 0  # never declared: nothing waits there
        producer = Producer(channel, exchange=Exchange(""))
        declared: set[str] = set()
        while True:
            message = channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                return moved
            payload = {"headers": message.headers or {}, "body": message.body,
                       "properties": {"body_encoding": None}}  # fmt: skip
            target = target_queue(payload)
            if target not in declared:
                KQueue(target, Exchange(target), target, queue_arguments={"x-max-priority": 9})(
                    channel
                ).declare()
                declared.add(target)
            props = message.properties
            producer.publish(
                message.body,
                routing_key=target,
                headers=message.headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                serializer=None,
                priority=props.get("priority"),
                correlation_id=props.get("correlation_id"),
                reply_to=props.get("reply_to"),
                delivery_mode=2,
            )
            channel.basic_ack(message.delivery_tag)
            moved += 1


class Reaper:
    """Finds dead incarnations and hands their calls to the living (one step per heartbeat tick)."""

    def __init__(
        self,
        registry: Registry,
        broker: redis.Redis | None,
        *,
        broker_is_store: bool = False,
        amqp_url: str | None = None,
        me: Callable[[], str | None],
        interval_s: float,
        expiry_s: float,
    ) -> None:
        self.registry = registry
        self.store = registry.client
        self.broker = broker
        self.broker_is_store = broker_is_store
        self.amqp_url = amqp_url  # a RabbitMQ broker: its own queues are drained through kombu
        self.me = me
        self.interval_s = interval_s
        self.expiry_s = expiry_s
        self.connected_since: float | None = None

    def lost_contact(self) -> None:
        self.connected_since = None

    def check(self, now: float) -> list[str]:
        """Reap every incarnation found dead at server time `now`; returns them."""
        if self.connected_since is None:
            self.connected_since = now
        if now - self.connected_since < self.expiry_s:
            return []
        # Late by more than half a beat: dead if its connections are gone too (a live process
        # has them, however late its beat), else only once the expiry passes.
        overdue: list[tuple[bytes, float]] = self.store.zrangebyscore(  # type: ignore[assignment]
            keys.INCARNATIONS, "-inf", now - self.interval_s * 1.5, withscores=True
        )
        reaped = []
        mine = self.me()
        names: set[str] | None = None
        for raw, at in overdue:
            incarnation = raw.decode()
            if incarnation == mine:
                continue
            if now - at < self.expiry_s:
                if names is None:
                    names = self._client_names()
                description = self.registry.describe(incarnation)
                name = client_name(description.get("node", ""), description.get("pid", ""))
                if not description or name in names or not names:
                    continue  # still connected (paused, or a slow beat): wait for the expiry
            self.reap(incarnation)
            reaped.append(incarnation)
        return reaped

    def _client_names(self) -> set[str]:
        """Names of the connections open to the store; empty if the server will not say."""
        try:
            clients: list[dict[str, Any]] = self.store.client_list()
        except redis.ResponseError:
            return set()
        return {str(c.get("name") or "") for c in clients} - {""}

    def reap(self, incarnation: str, *, leaving: bool = False) -> tuple[int, int]:
        """Fence a dead (or, `leaving`, this very) incarnation and restore what it held;
        (held calls restored, queued calls moved)."""
        lock = LOCK_PREFIX + incarnation
        if not self.store.set(lock, self.me() or "-", nx=True, px=30_000):
            return 0, 0  # another worker is on it
        try:
            fence(self.store, incarnation)
            if self.broker is not None and not self.broker_is_store:
                fence(self.broker, incarnation)
            description = self.registry.describe(incarnation)
            node = description.get("node") or incarnation.rsplit("/", 1)[0]
            entry = self.registry.alive().get(node)
            node_lives = not leaving and entry is not None and entry.incarnation not in ("", incarnation)
            own = worker_queue(node)

            def retarget(queue: str, payload: dict[str, Any]) -> str:
                return target_queue(payload) if queue == own and not node_lives else queue

            restored = moved = 0
            if self.broker is not None:
                # Its queue first, then what it held in front of that: the calls it was running
                # and had prefetched are the oldest, and go next (else a long own queue moved
                # in front of them delays the very calls its death interrupted).
                if not node_lives:
                    moved = drain_queue(self.broker, own)
                restored = restore_unacked(self.broker, incarnation, retarget=retarget)
            elif self.amqp_url is not None and not node_lives:
                moved = drain_amqp_queue(self.amqp_url, own)  # RabbitMQ requeued what it held
            self.registry.forget(incarnation)
            if not node_lives:
                pipe = self.store.pipeline(transaction=False)
                pipe.zrem(WORKERS_KEY, node)
                pipe.delete(ENTRY_PREFIX + node)
                pipe.execute()
            if restored or moved or not leaving:
                how = "left" if leaving else "died"
                log.warning(
                    "worker %s (%s) %s: %d held calls restored, %d queued calls moved",
                    node, incarnation, how, restored, moved,
                )  # fmt: skip
            return restored, moved
        finally:
            self.store.delete(lock)
