"""kombu's Redis transport, with a take that cannot lose a message.

kombu's Redis channel takes a message with BRPOP and records it as unacknowledged afterwards,
in a second command. A worker killed, paused or cut off between the two loses the message: it
is in no queue and no unacked hash, only in the dead process (or in a socket buffer nobody
reads). Here the take and the record are one Lua script (tasks/delivery/scripts.py RESERVE):
the message moves from its queue into the taking worker incarnation's own unacked hash. A Lua
script cannot block, so an idle consumer waits on doorbells instead: every publish also pushes
one entry to the queue's doorbell list (`agentful:bell:<queue>`), and a consumer BRPOPs the
doorbells of its queues; whatever wakes it (a doorbell, or BRPOP's own one-second timeout), it
then runs the script, and keeps running it while it finds messages. A lost doorbell costs at
most that one second; a doorbell too many, one empty script run.

Also, each worker incarnation keeps its own unacked hash and index (tasks/delivery/keys.py),
so the failover knows exactly what a dead worker held (workers/failover.py); an incarnation
declared dead takes, acknowledges and restores nothing more (its failover does). Acks and
restores go through a client that outlives the channel: a call that finishes after a broker
reconnect is still acknowledged. kombu's visibility-timeout sweep is off: liveness comes from
heartbeats, and a sweep would hand a long call still running to a second worker.

Selected with Celery's `broker_transport` (celeryconfig.py) for redis:// and rediss:// URLs, and
as SentinelTransport for sentinel:// ones (then every publish waits for a replica: `_replicated`):
kombu's documented way to plug in a transport class. Only kombu's public Channel hooks and
the methods its own Sentinel channel overrides are overridden. Not supported here: kombu's
`global_keyprefix` (refused at start) and Redis Cluster (multi-key scripts).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.delivery import identity, keys, scripts
from tasks.errors import NotReplicatedError

log = logging.getLogger(__name__)
PRODUCER = "-"  # the incarnation of a process that is no worker: its keys are never used to take
_RESERVE_SHA = hashlib.sha1(scripts.RESERVE.encode()).hexdigest()
MAX_TAKE = 16  # messages one script run may take (within the prefetch credit)


def incarnation() -> str:
    return identity.current() or PRODUCER


class QoS(kombu_redis.QoS):
    """Acks, rejects and restores on the keys of the incarnation that took the message."""

    @property  # kombu caches these per QoS; they change when the incarnation does
    def unacked_key(self) -> str:
        return keys.unacked(incarnation())

    @property
    def unacked_index_key(self) -> str:
        return keys.unacked_index(incarnation())

    @property
    def unacked_mutex_key(self) -> str:
        return keys.unacked_mutex(incarnation())

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel._recorded.pop(delivery_tag, None) is not None:
            virtual.QoS.append(self, message, delivery_tag)  # the script recorded it already
            return
        self.channel._owners[delivery_tag] = incarnation()
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        owner = self.channel._owners.pop(delivery_tag, incarnation())
        self.channel._ack(owner, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            owner = self.channel._owners.pop(delivery_tag, incarnation())
            self.channel._ack(owner, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore, on the owner's keys, and only while the owner is not fenced."""
        tag = bytes_to_str(tag)
        owner = self.channel._owners.pop(tag, incarnation())
        unacked, index = keys.unacked(owner), keys.unacked_index(owner)

        def restore_transaction(pipe: Any) -> None:
            if pipe.exists(keys.fenced(owner)):
                pipe.multi()
                return
            p = pipe.hget(unacked, tag)
            pipe.multi()
            pipe.zrem(index, tag)
            pipe.hdel(unacked, tag)
            if p:
                message, exchange, routing_key = loads(bytes_to_str(p))
                self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as c:
            c.transaction(restore_transaction, unacked)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Off: a dead worker's calls are restored by the failover, never a live one's."""


class Channel(kombu_redis.Channel):
    QoS = QoS
    # Transport options of ours (celeryconfig.py): a publish returns once this many replicas have
    # it (Redis WAIT, same round trip), else raises NotReplicatedError. Replication is
    # asynchronous: without it, a primary that dies right after `.delay()` returned takes the
    # call with it, and the replica Sentinel promotes never had it.
    from_transport_options: tuple[str, ...] = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "wait_replicas",
        "wait_replicas_ms",
    )
    wait_replicas = 0
    wait_replicas_ms = 2000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._recorded: dict[str, str] = {}  # tag -> incarnation, taken by the script, not yet appended
        self._owners: dict[str, str] = {}  # tag -> incarnation that took it (until acked)
        self._noack_queues: set[str] = set()
        self._reserving = False  # the command on the poll connection is the script, not BRPOP
        self._drain = True  # run the script next (it found messages, or something woke us)
        self._reserve_args: tuple[str, list[str]] = (PRODUCER, [])
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("agentful's Redis transport does not support kombu's global_keyprefix")
        # Made while the channel is open; it keeps its pool when the channel closes, so messages
        # taken before a reconnect can still be acknowledged after it (redis-py's client over a
        # ConnectionPool is thread-safe and reconnects by itself).
        self._stable = self._create_client()
        self._ack_script = self._stable.register_script(scripts.ACK)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._stable

    @property
    def supports_batch_publish(self) -> bool:
        """kombu's publish batches never read their replies, so they cannot wait for replicas."""
        return not self.wait_replicas and bool(super().supports_batch_publish)

    # --- publishing ------------------------------------------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        bell = keys.bell(queue)
        batch = kwargs.get("_publish_batch")
        if batch is not None or (self._expires and queue in self._expires):
            super()._put(queue, message, **kwargs)
            if batch is not None:
                batch.add("lpush", bell, 1)
                batch.add("ltrim", bell, 0, keys.BELL_CAP - 1)
            else:
                self._ring([queue])
            return
        pri = self._get_message_priority(message, reverse=False)
        pipe = self._stable.pipeline(transaction=False)
        pipe.lpush(self._q_for_pri(queue, pri), dumps(message))
        pipe.lpush(bell, 1)
        pipe.ltrim(bell, 0, keys.BELL_CAP - 1)
        self._replicated(pipe, message)

    def _replicated(self, pipe: Any, message: Any) -> None:
        """Run the pipeline; with `wait_replicas`, its last command is WAIT and must see them."""
        if not self.wait_replicas:
            pipe.execute()
            return
        pipe.wait(self.wait_replicas, self.wait_replicas_ms)
        acked = pipe.execute()[-1]
        if acked < self.wait_replicas:
            task_id = (message.get("headers") or {}).get("id") if isinstance(message, dict) else None
            raise NotReplicatedError(
                f"call {task_id or '?'} reached the broker's primary, but {acked} of the "
                f"{self.wait_replicas} replica(s) confirmed it within {self.wait_replicas_ms} ms: "
                "it may be lost if the primary fails now. Submit it again with the same "
                "idempotency key (it then runs once)",
                task_id or "",
            )

    def _ring(self, queues: list[str], pipe: Any = None) -> None:
        target = pipe if pipe is not None else self._stable.pipeline(transaction=False)
        for queue in queues:
            target.lpush(keys.bell(queue), 1)
            target.ltrim(keys.bell(queue), 0, keys.BELL_CAP - 1)
        if pipe is None:
            target.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """kombu's restore of a message to its queues, ringing their doorbells too."""
        try:
            try:
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            except KeyError:
                pass
            queues = self._lookup(exchange, routing_key)
            pri = self._get_message_priority(payload, reverse=False)
            for queue in queues:
                (pipe.lpush if leftmost else pipe.rpush)(self._q_for_pri(queue, pri), dumps(payload))
            self._ring(list(queues), pipe)
        except Exception:
            # kombu logs and goes on, and its transaction then drops the message from the
            # unacked hash without requeueing it. Abort instead: it stays where it is, and is
            # restored by the next attempt (a reconnect, the failover).
            log.critical("Could not restore message: %r", payload, exc_info=True)
            raise

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> list[str]:
        """On a channel closed by a reconnect kombu's exchange table is gone; Celery's queues
        have a direct exchange of their own name, so the queue is the routing key."""
        if self.connection is None and (not exchange or exchange == routing_key):
            return [str(routing_key or default or self.deadletter_queue)]
        return list(super()._lookup(exchange, routing_key, default))

    # --- consuming -------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack_queues.add(queue)
        else:
            self._noack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        if self._drain:
            self._reserving = True
            owner = incarnation()
            if owner != PRODUCER:
                identity.ensure_registered(owner)
            lists = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
            record = "".join(
                "0" if q in self._noack_queues else "1" for pri in self.priority_steps for q in queues
            )
            limit = max(1, min(MAX_TAKE, self.qos.can_consume_max_estimate() or MAX_TAKE))
            self._reserve_args = (owner, queues)
            ks = [keys.unacked(owner), keys.unacked_index(owner), keys.fenced(owner), *lists]
            connection.send_command("EVALSHA", _RESERVE_SHA, len(ks), *ks, limit, record, keys.BELL)
        else:
            self._reserving = False
            connection.send_command("BRPOP", *[keys.bell(q) for q in queues], timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            connection = self.client.connection
            command = "EVALSHA" if self._reserving else "BRPOP"
            try:
                reply = self.client.parse_response(connection, command, **options)
            except self.connection_errors:
                connection.disconnect()  # the next iteration reconnects
                raise
            except redis.exceptions.NoScriptError:
                self._stable.script_load(scripts.RESERVE)  # a restarted broker forgot it
                self._drain = True
                raise Empty() from None
            except redis.exceptions.ResponseError as exc:
                if "AGENTFUL_FENCED" not in str(exc):
                    raise
                self._on_fenced()
                raise Empty() from None
            if not self._reserving:
                self._drain = True  # a doorbell, or the timeout: look in the queues now
                raise Empty()
            if not reply:
                self._drain = False
                raise Empty()
            self._drain = True
            owner, _ = self._reserve_args
            items = list(zip(reply[0::2], reply[1::2], strict=True))
            for key, item in items:
                dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
                try:
                    payload = loads(bytes_to_str(item))
                except ValueError:
                    log.error("dropped a message that is not JSON from %s: %r", dest, item[:200])
                    continue
                if dest not in self._noack_queues:
                    tag = payload.get("properties", {}).get("delivery_tag")
                    if isinstance(tag, str):
                        self._recorded[tag] = owner
                        self._owners[tag] = owner
                self._queue_cycle.rotate(dest)
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu: idle
            self._flush_brpop_reauth()

    def _on_fenced(self) -> None:
        """This incarnation was declared dead (it was paused or cut off past its heartbeat):
        everything it held was restored by the failover. Carry on as a new incarnation."""
        identity.rotate(incarnation())  # logs it
        self._drain = True

    def _ack(self, owner: str, tag: str) -> None:
        self._ack_script(
            keys=[keys.unacked(owner), keys.unacked_index(owner), keys.fenced(owner)], args=[tag]
        )

    def close(self) -> None:
        super().close()
        self._recorded.clear()


class Transport(kombu_redis.Transport):
    Channel = Channel
    driver_name = "redis"


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel, its connections made to whichever node the Sentinels name the primary
    (kombu's SentinelChannel: it asks again on every new connection, so after a failover)."""

    _sentinel_only = [
        o
        for o in kombu_redis.SentinelChannel.from_transport_options
        if o not in Channel.from_transport_options
    ]
    from_transport_options = (*Channel.from_transport_options, *_sentinel_only)  # type: ignore[assignment]


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
