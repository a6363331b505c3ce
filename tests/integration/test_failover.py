"""A worker SIGKILLed with calls in flight and queued: every call completes elsewhere, fast."""

from __future__ import annotations

import json
import os
import socket
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
    from tasks.registry import Registry
    from workers.failover import HELD_PREFIX
    from workers.launcher import WorkerProcess, wait_for

    client = redis.Redis.from_url(os.environ["AGENTFUL_BROKER_URL"])
    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    node = f"victim@{HOST}"
    victim = WorkerProcess(
        "victim@%h", ["everything"], concurrency=2, log_path=tmp_path / "victim.log"
    ).start()
    try:
        assert wait_for(lambda: node in registry.alive(), 60), "victim never beat"
        call_tool.delay("everything", "echo", {"message": "warm"}).get(timeout=30)
        slow = {"duration": 2, "steps": 1}
        results = [
            call_tool.apply_async(
                ("everything", "trigger-long-running-operation", slow), queue=f"worker.{node}"
            )
            for _ in range(6)
        ]

        def held() -> int:
            raw = client.get(HELD_PREFIX + node)
            return len(json.loads(raw)) if raw else 0

        assert wait_for(lambda: held() >= 4, 20), "the victim never published the calls it holds"
        assert client.llen(f"worker.{node}") == 2, "two calls should still wait in the victim's queue"
    finally:
        victim.kill()  # SIGKILL to its whole process group, calls in flight
    values = [r.get(timeout=45) for r in results]
    assert all(v["is_error"] is False for v in values)
    assert {v["worker"] for v in values}.isdisjoint({node})
    assert node not in registry.dead(), "the dead worker should have been reaped"
    assert client.llen(f"worker.{node}") == 0


def test_a_call_taken_from_its_own_queue_just_before_death_is_restored(broker: str) -> None:
    """Held tags are published every 0.2 s: a call the dead worker took after the last publish
    is found by its unacked entry, which names the dead worker's own queue."""
    import uuid

    from kombu.connection import Connection

    from tasks import app
    from tasks.registry import worker_queue
    from tasks.routing import server_queue
    from workers.failover import Reaper

    dead = f"gone-{uuid.uuid4().hex[:6]}@{HOST}"
    client = redis.Redis.from_url(broker)
    target = server_queue(f"srv-{uuid.uuid4().hex[:6]}")
    with app.producer_or_acquire() as producer:
        app.send_task(
            "agentful.call_tool",
            (target.removeprefix("mcp."), "echo", {}),
            queue=worker_queue(dead),
            producer=producer,
        )
    with Connection(broker) as conn:  # the "worker": takes the call and dies before acking it
        taken = conn.SimpleQueue(worker_queue(dead)).get(timeout=5)
        assert client.hexists("unacked", taken.delivery_tag)
        restored, moved = Reaper(broker, node="test").reap(dead)
        assert (restored, moved) == (1, 1), "restored into its own queue, then moved to the server's"
        assert not client.hexists("unacked", taken.delivery_tag)
        assert client.llen(target) == 1
        payload = json.loads(client.lindex(target, 0) or b"{}")
        assert payload["headers"]["task"] == "agentful.call_tool"
        client.delete(target)
