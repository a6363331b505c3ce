"""How many calls wait in agentful's queues, read from the broker: one function for beat's
autoscaler, the cluster gauges (tasks/telemetry/cluster.py) and `agentful status`.

Redis and Valkey: kombu keeps a queue as one list per priority band (the queue's own name for
band 0, `<queue>\\x06\\x16<band>` for the others, kombu's default `priority_steps`), so a depth is
the sum of those lists' LLEN, all queues in one pipelined round trip. A passive `queue_declare`
through kombu would count the same but costs two round trips per queue. RabbitMQ: a passive
`queue_declare`'s message_count (ready messages); a queue never declared counts 0.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel

from tasks.errors import BrokerUnavailableError
from tasks.redis_urls import is_redis_url
from tasks.redisconn import connect
from tasks.registry import worker_queue
from tasks.routing import CONTROL_QUEUE, SERVER_QUEUE_PREFIX, server_queue

# celeryconfig keeps kombu's default bands (see its comment): the lists of bands other than 0.
_SEP: str = RedisChannel.sep
_BANDS = tuple(step for step in PRIORITY_STEPS if step)
_BINDING_PREFIX = "_kombu.binding."  # kombu's Redis transport: one set of bindings per exchange
AGENTFUL_QUEUE_PREFIXES = (SERVER_QUEUE_PREFIX, "worker.")
# The message header naming the server of a call (or other request to one server), set at publish
# (tasks/api.py): workers/failover.py moves a dead worker's queued calls to their server's queue
# by it: with message signing on, the body is Celery's signed envelope, not the task's JSON.
SERVER_HEADER = "agentful_server"


def agentful_queues(servers: Collection[str], nodes: Collection[str]) -> list[str]:
    """The control queue, each server's shared queue and each worker's own queue, sorted."""
    shared = [server_queue(s) for s in sorted(servers)]
    return [CONTROL_QUEUE, *shared, *(worker_queue(n) for n in sorted(nodes))]


def queue_depths(broker_url: str, queues: Sequence[str]) -> dict[str, int]:
    """Calls waiting in each queue, every priority band counted; raises BrokerUnavailableError."""
    if is_redis_url(broker_url):
        client = connect(broker_url, socket_connect_timeout=3, socket_timeout=5)
        try:
            return redis_depths(client, queues)
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read queue depths from the broker: {exc}") from exc
        finally:
            client.close()
    return _amqp_depths(broker_url, queues)


def redis_depths(client: Any, queues: Sequence[str]) -> dict[str, int]:
    """queue_depths on an open redis.Redis client (one pipeline round trip)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
        for band in _BANDS:
            pipe.llen(f"{q}{_SEP}{band}")
    counts = [int(n) for n in pipe.execute()]
    width = 1 + len(_BANDS)
    return {q: sum(counts[i * width : (i + 1) * width]) for i, q in enumerate(queues)}


def _amqp_depths(broker_url: str, queues: Sequence[str]) -> dict[str, int]:
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    out: dict[str, int] = {}
    try:
        with Connection(broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=4)
            channel = conn.channel()
            for q in queues:
                try:
                    out[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
                except conn.channel_errors:  # NOT_FOUND: never declared; it closes the channel
                    out[q] = 0
                    channel = conn.channel()
            channel.close()
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot read queue depths from the broker: {exc}") from exc
    return out


def bound_queues(broker_url: str) -> list[str]:
    """Agentful queues kombu ever declared on a Redis broker (its binding sets; never deleted,
    so a server or worker long gone is still there); [] on other brokers."""
    if not is_redis_url(broker_url):
        return []
    client = connect(broker_url, socket_connect_timeout=3, socket_timeout=5)
    found: set[str] = set()
    try:
        for key in client.scan_iter(match=_BINDING_PREFIX + "*", count=500):
            for member in cast("set[bytes]", client.smembers(key)):
                queue = member.decode(errors="replace").split(_SEP)[-1]
                if queue.startswith(AGENTFUL_QUEUE_PREFIXES):
                    found.add(queue)
    except redis.RedisError as exc:
        raise BrokerUnavailableError(f"cannot read the broker's queues: {exc}") from exc
    finally:
        client.close()
    return sorted(found)
