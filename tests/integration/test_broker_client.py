"""tasks/broker_client.py: kombu's Redis channel keeps one redis-py client instead of one per
command, on the real embedded Valkey, and loses nothing (messages, threads, a replaced pool)."""

from __future__ import annotations

import threading
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport import redis as kombu_redis

import tasks  # noqa: F401  (importing the task layer installs the channel)
from tasks import broker_client


def test_tasks_installs_the_shared_client_channel(broker: str) -> None:
    assert kombu_redis.Transport.Channel is broker_client.Channel
    with Connection(broker) as conn:
        assert isinstance(conn.default_channel, broker_client.Channel)


def test_one_client_per_channel_and_every_message_arrives(broker: str) -> None:
    queue = Queue("test.broker-client.publish")
    with Connection(broker) as conn:
        channel: Any = conn.default_channel
        producer = conn.Producer()
        clients = set()
        for i in range(50):
            producer.publish({"n": i}, routing_key=queue.name, declare=[queue], serializer="json")
            with channel.conn_or_acquire() as client:
                clients.add(id(client))
        assert len(clients) == 1
        got = []
        with conn.SimpleQueue(queue) as q:
            for _ in range(50):
                message = q.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
        assert sorted(got) == list(range(50))


def test_the_shared_client_serves_many_threads(broker: str) -> None:
    """redis-py checks a pooled connection out per command: one client, 8 threads, no loss."""
    key = "test.broker-client.threads"
    with Connection(broker) as conn:
        channel: Any = conn.default_channel
        with channel.conn_or_acquire() as client:
            client.delete(key)
        errors: list[BaseException] = []

        def push(t: int) -> None:
            try:
                for i in range(200):
                    with channel.conn_or_acquire() as c:
                        c.lpush(key, f"{t}:{i}")
            except BaseException as exc:  # collected: a failure in a thread must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=push, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not errors
        with channel.conn_or_acquire() as client:
            values = {v.decode() for v in client.lrange(key, 0, -1)}
            client.delete(key)
        assert values == {f"{t}:{i}" for t in range(8) for i in range(200)}


def test_a_replaced_pool_gets_a_new_client(broker: str) -> None:
    with Connection(broker) as conn:
        channel: Any = conn.default_channel
        with channel.conn_or_acquire() as first:
            pass
        channel._pool = None  # what kombu does when it drops the channel's pool
        with channel.conn_or_acquire() as second:
            assert second is not first
            assert second.connection_pool is channel.pool
            assert second.ping()


def test_an_explicit_client_is_used_as_given(broker: str) -> None:
    with Connection(broker) as conn:
        channel: Any = conn.default_channel
        own = object()
        with channel.conn_or_acquire(own) as client:
            assert client is own
