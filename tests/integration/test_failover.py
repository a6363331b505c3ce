"""A worker SIGKILLed with calls in flight and queued: every call completes elsewhere, fast; and
the pieces under it: the take that records a message in the taker's own unacked hash in the
same step, the failover that restores exactly that hash, and the fence."""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import HAS_NODE, need

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


def test_a_killed_workers_calls_move_to_a_live_worker(cluster: Any, tmp_path: Path) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool
    from tasks.delivery import keys
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    client = redis.Redis.from_url(os.environ["AGENTFUL_BROKER_URL"])
    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    node = f"victim@{HOST}"
    victim = WorkerProcess(
        "victim@%h", ["everything"], concurrency=2, prefetch=2, log_path=tmp_path / "victim.log"
    ).start()
    try:
        assert wait_for(lambda: node in registry.alive(), 60), "victim never beat"
        incarnation = registry.alive()[node].incarnation
        assert incarnation.startswith(node + "/")
        call_tool.delay("everything", "echo", {"message": "warm"}).get(timeout=30)
        slow = {"duration": 2, "steps": 1}
        results = [
            call_tool.apply_async(
                ("everything", "trigger-long-running-operation", slow), queue=f"worker.{node}"
            )
            for _ in range(6)
        ]
        held = keys.unacked(incarnation)
        # 2 running and 2 prefetched: all four in its own unacked hash, the moment it took them.
        assert wait_for(lambda: client.hlen(held) == 4, 20), "the victim's hash never held its calls"
        assert client.llen(f"worker.{node}") == 2, "two calls should still wait in the victim's queue"
    finally:
        victim.kill()  # SIGKILL to its whole process group, calls in flight
    values = [r.get(timeout=45) for r in results]
    assert all(v["is_error"] is False for v in values)
    assert {v["worker"] for v in values}.isdisjoint({node})
    assert client.hlen(held) == 0 and client.exists(keys.fenced(incarnation))
    assert node not in registry.dead(), "the dead worker should have been reaped"
    assert client.llen(f"worker.{node}") == 0


@pytest.fixture
def as_worker() -> Iterator[str]:
    """This process as a worker incarnation (what `celery worker` sets up at start)."""
    from tasks.delivery import identity

    node = f"gone-{uuid.uuid4().hex[:6]}@{HOST}"
    incarnation = identity.begin(node)
    yield incarnation
    identity.forget()


def _transport_connection(broker: str) -> Any:
    from kombu.connection import Connection

    return Connection(broker, transport="tasks.delivery.transport:Transport")


def test_a_take_records_the_message_in_the_takers_hash_in_the_same_step(broker: str, as_worker: str) -> None:
    from tasks.delivery import keys

    client = redis.Redis.from_url(broker)
    queue = f"test.take-{uuid.uuid4().hex[:6]}"
    with _transport_connection(broker) as conn:
        producer = conn.Producer()
        for i in range(3):
            producer.publish({"n": i}, routing_key=queue, declare=[conn.SimpleQueue(queue).queue])
        assert client.llen(keys.bell(queue)) == 3, "each publish rings the queue's doorbell"
        simple = conn.SimpleQueue(queue)
        first = simple.get(timeout=5)
        entry = client.hget(keys.unacked(as_worker), first.delivery_tag)
        assert entry is not None, "taken and recorded as one step"
        assert json.loads(entry)[0]["properties"]["delivery_tag"] == first.delivery_tag
        first.ack()
        assert not client.hexists(keys.unacked(as_worker), first.delivery_tag)
        got = [simple.get(timeout=5) for _ in range(2)]
        assert sorted(m.payload["n"] for m in got) == [1, 2]
        for m in got:
            m.ack()
        simple.close()
    assert client.llen(queue) == 0 and client.hlen(keys.unacked(as_worker)) == 0
    assert client.llen(keys.bell(queue)) == 0, "each take takes one doorbell"


def test_a_dead_incarnations_calls_are_restored_exactly_and_it_is_fenced(broker: str, as_worker: str) -> None:
    """What a worker took before it died is in its hash, including a call taken from its own
    queue a moment before: restored to its server's queue; the dead incarnation then can
    neither acknowledge (which would drop a restored call) nor take anything more."""
    from tasks import app
    from tasks.delivery import identity, keys
    from tasks.registry import Registry, worker_queue
    from tasks.routing import server_queue
    from workers.failover import Reaper

    node = as_worker.rsplit("/", 1)[0]
    client = redis.Redis.from_url(broker)
    target = server_queue(f"srv-{uuid.uuid4().hex[:6]}")
    with app.producer_or_acquire() as producer:
        app.send_task(
            "agentful.call_tool",
            (target.removeprefix("mcp."), "echo", {}),
            queue=worker_queue(node),
            producer=producer,
        )
    registry = Registry(broker)
    with _transport_connection(broker) as conn:  # the "worker": takes the call and dies before acking it
        taken = conn.SimpleQueue(worker_queue(node)).get(timeout=5)
        assert client.hexists(keys.unacked(as_worker), taken.delivery_tag)
        reaper = Reaper(
            registry, client, broker_is_store=True, me=lambda: "someone-else", interval_s=2, expiry_s=5
        )
        restored, moved = reaper.reap(as_worker)
        assert (restored, moved) == (1, 0), "restored straight to its server's queue"
        assert client.hlen(keys.unacked(as_worker)) == 0 and client.exists(keys.fenced(as_worker))
        assert client.llen(target) == 1
        payload = json.loads(client.lindex(target, 0) or b"{}")
        assert payload["headers"]["task"] == "agentful.call_tool" and payload["headers"]["redelivered"]
        taken.ack()  # the dead worker, resumed, acknowledges: refused, nothing dropped
        assert client.llen(target) == 1
        # Its next take is refused under the fenced incarnation: it goes on as a new one.
        again = conn.SimpleQueue(target).get(timeout=5)
        now = identity.current()
        assert now is not None and now != as_worker and now.startswith(node + "/")
        assert client.hexists(keys.unacked(now), again.delivery_tag)
        assert not client.hexists(keys.unacked(as_worker), again.delivery_tag)
        again.ack()
        assert client.hlen(keys.unacked(now)) == 0


def test_a_dead_workers_queue_moves_in_order_behind_the_calls_it_held(broker: str, as_worker: str) -> None:
    """The calls a dead worker was running are next to be taken, then its own queue in the order
    it was queued in: a long own queue moved in front of them would hold up the very calls its
    death interrupted."""
    from tasks import app
    from tasks.registry import Registry, worker_queue
    from tasks.routing import server_queue
    from workers.failover import Reaper

    node = as_worker.rsplit("/", 1)[0]
    client = redis.Redis.from_url(broker)
    target = server_queue(f"srv-{uuid.uuid4().hex[:6]}")
    server = target.removeprefix("mcp.")

    def send(numbers: range) -> None:
        with app.producer_or_acquire() as producer:
            for n in numbers:
                app.send_task(
                    "agentful.call_tool",
                    (server, "echo", {"n": n}),
                    queue=worker_queue(node),
                    producer=producer,
                )

    send(range(1))
    with _transport_connection(broker) as conn:  # takes the first, runs it, and dies
        conn.SimpleQueue(worker_queue(node)).get(timeout=5)
        send(range(1, 6))  # meanwhile its own queue fills
        reaper = Reaper(
            Registry(broker),
            client,
            broker_is_store=True,
            me=lambda: "someone-else",
            interval_s=2,
            expiry_s=5,
        )
        assert reaper.reap(as_worker) == (1, 5)
    order = []
    while (raw := client.rpop(target)) is not None:  # the consuming end
        assert isinstance(raw, bytes)
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        order.append(args[2]["n"])
    assert order == [0, 1, 2, 3, 4, 5], order
