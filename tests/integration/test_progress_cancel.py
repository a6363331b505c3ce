"""Progress notifications and cancellation of calls, on a real worker with server-everything.

server-everything's `trigger-long-running-operation` sleeps `duration` seconds in `steps` steps
and sends a progress notification after each. Calls go to this module's own worker's queue, so
other workers of the test session never take them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from celery import uuid
from celery.exceptions import TaskRevokedError

from tests.conftest import DATA_DIR, HAS_NODE, need

pytestmark = pytest.mark.integration

LONG = "trigger-long-running-operation"


@pytest.fixture(scope="module")
def queue(broker: str) -> Iterator[str]:
    """One real worker (threads pool, 2 slots, prefetch 1); yields its own queue."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import app
    from tasks.registry import worker_queue
    from workers.launcher import WorkerProcess, wait_for

    node = f"pc@{socket.gethostname()}"
    proc = WorkerProcess(
        "pc@%h", ["everything", "time"], concurrency=2, prefetch=1, log_path=DATA_DIR / "logs" / "pc.log"
    ).start()
    try:
        assert wait_for(lambda: bool(app.control.ping(destination=[node], timeout=0.5)), 60), "worker pc down"
        yield worker_queue(node)
    finally:
        proc.stop()


def _in_flight(node_queue: str) -> int | None:
    """The worker's in-flight calls on server-everything, from its last heartbeat."""
    from tasks.api import catalog_store
    from tasks.registry import Registry

    store = catalog_store()
    assert store is not None
    for beat in Registry(store.url).alive().values():
        if beat.queue == node_queue and "everything" in beat.servers:
            return beat.servers["everything"].in_flight
    return None


def test_progress_arrives_in_order_and_complete(queue: str) -> None:
    from tasks import call_tool
    from tasks.progress import channel, subscribe

    task_id = uuid()
    assert channel(task_id) == f"agentful:progress:{task_id}"
    with subscribe(task_id) as events:
        r = call_tool.apply_async(
            ("everything", LONG, {"duration": 1, "steps": 5}),
            {"progress": True},
            task_id=task_id,
            queue=queue,
        )
        seen = list(events.until(r, timeout_s=30))
    assert [e["progress"] for e in seen] == [1, 2, 3, 4, 5]
    assert {e["total"] for e in seen} == {5}
    assert all(set(e) == {"progress", "total", "message"} for e in seen)
    result = r.get(timeout=5)
    assert result["is_error"] is False
    assert "Long running operation completed" in result["content"][0]["text"]


def test_no_progress_is_published_unless_asked(queue: str) -> None:
    from tasks import call_tool
    from tasks.progress import subscribe

    task_id = uuid()
    with subscribe(task_id) as events:
        r = call_tool.apply_async(
            ("everything", LONG, {"duration": 0.3, "steps": 3}), task_id=task_id, queue=queue
        )
        assert list(events.until(r, timeout_s=30)) == []
    assert r.get(timeout=5)["is_error"] is False


def test_follow_watches_a_call_already_queued(queue: str) -> None:
    from tasks import call_tool
    from tasks.progress import follow

    r = call_tool.apply_async(
        ("everything", LONG, {"duration": 2, "steps": 4}), {"progress": True}, queue=queue
    )
    seen = [e["progress"] for e in follow(r, timeout_s=30)]
    assert seen and seen == sorted(seen) and seen[-1] == 4  # it may miss the first ones, not the last
    assert r.get(timeout=5)["is_error"] is False


def test_a_revoked_queued_call_never_runs(queue: str) -> None:
    from tasks import call_tool, cancel_call
    from tasks.progress import subscribe

    blockers = [
        call_tool.apply_async(("everything", LONG, {"duration": 2, "steps": 2}), queue=queue)
        for _ in range(2)
    ]
    task_id = uuid()
    with subscribe(task_id) as events:
        queued = call_tool.apply_async(
            ("everything", LONG, {"duration": 0.3, "steps": 3}),
            {"progress": True},
            task_id=task_id,
            queue=queue,
        )
        cancel_call(task_id)
        with pytest.raises(TaskRevokedError):
            queued.get(timeout=30)
        for b in blockers:
            assert b.get(timeout=30)["is_error"] is False
        # FIFO on the worker's queue: a call sent after it has run, so it would have run too.
        after = call_tool.apply_async(("everything", "echo", {"message": "after"}), queue=queue).get(
            timeout=30
        )
        assert after["content"][0]["text"] == "Echo: after"
        assert events.get(0.5) is None  # not one progress event: it never ran
    assert queued.state == "REVOKED"


def test_a_running_call_cancelled_midway_ends_as_cancelled_and_the_session_serves_on(queue: str) -> None:
    from tasks import call_tool, cancel_call
    from tasks.progress import subscribe
    from workers.launcher import wait_for

    task_id = uuid()
    with subscribe(task_id) as events:
        r = call_tool.apply_async(
            ("everything", LONG, {"duration": 60, "steps": 60}),
            {"progress": True},
            task_id=task_id,
            queue=queue,
        )
        first = events.get(30)
        assert first is not None and first["progress"] == 1  # it is running
        cancel_call(task_id)
        with pytest.raises(TaskRevokedError):
            r.get(timeout=15)
    # The worker let go of the MCP call (it would hold it for a minute otherwise)...
    assert wait_for(lambda: _in_flight(queue) == 0, 15), "the call is still in flight on the worker"
    assert r.state == "REVOKED"  # ...stored Celery's own cancelled outcome, and nothing overwrote it
    # ...and the same session serves the next call.
    echo = call_tool.apply_async(("everything", "echo", {"message": "still here"}), queue=queue).get(
        timeout=30
    )
    assert echo["content"][0]["text"] == "Echo: still here"


def test_cancelling_an_unknown_or_finished_call_is_harmless(queue: str) -> None:
    from tasks import call_tool, cancel_call

    cancel_call(uuid())
    done = call_tool.apply_async(("time", "get_current_time", {"timezone": "UTC"}), queue=queue)
    assert done.get(timeout=30)["is_error"] is False
    cancel_call(done.id)
    assert done.state == "SUCCESS"  # a stored result is not overwritten by a late cancel


def test_progress_is_refused_on_a_bad_keyword(queue: Any) -> None:
    from tasks import call_tool

    with pytest.raises(TypeError, match="unexpected keyword argument 'progres'"):
        call_tool.delay("everything", "echo", {"message": "x"}, progres=True)
