"""Batched calls (`tasks.call_tools`) through the real embedded Valkey and two real workers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import HAS_NODE, need

pytestmark = pytest.mark.integration


def echo(i: int, **kw: Any) -> dict[str, Any]:
    return {"server": "everything", "tool": "echo", "arguments": {"message": f"m{i}"}, **kw}


def test_a_batch_returns_each_calls_result_in_order_from_few_messages(
    cluster: Any, published: list[str]
) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool, call_tools

    call_tool.delay("everything", "echo", {"message": "warm"}).get(timeout=30)
    published.clear()
    batch = call_tools([echo(i) for i in range(250)])
    values = batch.get(timeout=60)
    assert [v["content"][0]["text"] for v in values] == [f"Echo: m{i}" for i in range(250)]
    assert all(v["is_error"] is False and v["attempts"] == 1 and v["worker"] for v in values)
    assert all(v["server"] == "everything" and v["tool"] == "echo" for v in values)
    assert len({r.id for r in batch.results}) == 250
    # Each call has its own stored result under its own id, as a single call would.
    one = call_tool.AsyncResult(batch.results[7].id)
    assert one.get(timeout=5)["content"][0]["text"] == "Echo: m7" and one.name == "agentful.call_tool"
    assert set(published) == {"agentful.call_batch"}
    assert len(published) <= 2 * 3, f"250 calls in {len(published)} messages (<= 100 calls a message)"


def test_waiting_for_a_batch_subscribes_once_per_batch_message(cluster: Any, broker: str) -> None:
    """Celery's ResultSet subscribes to each call's channel; a batch's caller to each batch's."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    import redis

    from tasks import call_tools

    client = redis.Redis.from_url(broker)

    def subscribes() -> int:
        return int(client.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0))

    before = subscribes()
    batch = call_tools([echo(i) for i in range(300)])
    values = batch.get(timeout=60)
    assert [v["content"][0]["text"] for v in values] == [f"Echo: m{i}" for i in range(300)]
    assert len(batch.batches) <= 6 and sum(map(len, batch.batches.values())) == 300
    assert subscribes() - before == 1, "one SUBSCRIBE naming the batches' channels, not 300"


def test_calls_of_several_servers_and_a_tools_own_error(cluster: Any) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tools

    values = call_tools(
        [
            echo(0),
            {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}},
            {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "Mars/Olympus_Mons"}},
            {"server": "everything-http", "tool": "echo", "arguments": {"message": "http"}},
        ]
    ).get(timeout=60)
    assert values[0]["content"][0]["text"] == "Echo: m0"
    assert values[1]["structured_content"]["timezone"] == "UTC" and values[1]["is_error"] is False
    assert values[2]["is_error"] is True  # a tool's own error is a result, as for call_tool
    assert values[3]["content"][0]["text"] == "Echo: http"


def ev(**kw: Any) -> dict[str, Any]:
    return {"server": "everything", "tool": "echo", **kw}


@pytest.mark.parametrize(
    ("bad", "error", "says"),
    [
        ({"server": "nope", "tool": "echo", "arguments": {}}, "UnknownServerError", "nope"),
        (ev(tool="nope", arguments={}), "UnknownToolError", "nope"),
        (ev(arguments={"message": 5}), "InvalidArgumentsError", "message"),
        (ev(arguments={"message": "x" * 70000}), "PayloadTooLargeError", ""),
        (ev(arguments={"message": "x"}, timeout_s=-1), "InvalidOptionError", "timeout"),
        (ev(arguments={"message": "x"}, progress=True), "InvalidOptionError", "progress"),
        (ev(arguments={"message": "x"}, project_id=""), "InvalidOptionError", "project_id"),
        (ev(arguments={"message": "x"}, queue="x"), "TypeError", "queue"),
        ({"tool": "echo", "arguments": {"message": "x"}}, "TypeError", "server"),
        (["everything", "echo", {}], "TypeError", "mapping"),
    ],
)
def test_one_bad_call_is_refused_naming_it_and_nothing_is_queued(
    cluster: Any, published: list[str], bad: Any, error: str, says: str
) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool, call_tools

    call_tool.delay("everything", "echo", {"message": "warm"}).get(timeout=30)  # its catalog is published
    published.clear()
    with pytest.raises(Exception) as caught:
        call_tools([echo(0), echo(1), bad, echo(3)])
    assert type(caught.value).__name__ == error
    assert str(caught.value).startswith("calls[2]: ") and says in str(caught.value)
    assert published == [], "a refused batch queues nothing"


def test_an_empty_batch_is_empty(cluster: Any, published: list[str]) -> None:
    from tasks import call_tools

    assert call_tools([]).get(timeout=5) == [] and published == []


def test_an_idempotency_key_runs_once_across_batches(cluster: Any, published: list[str]) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tools

    first = call_tools([echo(i, idempotency_key=f"batch-key-{i}") for i in range(5)])
    values = first.get(timeout=60)
    published.clear()
    again = call_tools([echo(i, idempotency_key=f"batch-key-{i}") for i in range(5)])
    assert [r.id for r in again.results] == [r.id for r in first.results]
    assert again.get(timeout=5) == values
    assert published == [], "calls whose result is stored are not queued again"


def test_a_call_that_times_out_is_retried_alone_or_fails_alone(cluster: Any) -> None:
    """server-everything marks the tool safe to rerun: a timed-out call goes back to the queue
    alone (a call_tool with the same id) until the retry policy gives up; with
    retry_interrupted=False it fails at once; the calls beside them are untouched."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tools
    from tasks.errors import ToolTimeoutError

    slow = {"server": "everything", "tool": "trigger-long-running-operation",
            "arguments": {"duration": 3, "steps": 1}, "timeout_s": 0.5}  # fmt: skip
    batch = call_tools([echo(0), slow, {**slow, "retry_interrupted": False}, echo(3)])
    assert batch.results[0].get(timeout=30)["content"][0]["text"] == "Echo: m0"
    assert batch.results[3].get(timeout=30)["content"][0]["text"] == "Echo: m3"
    with pytest.raises(ToolTimeoutError, match="not retried"):
        batch.results[2].get(timeout=30)
    with pytest.raises(ToolTimeoutError, match=r"gave up after 3 attempts"):
        batch.results[1].get(timeout=60)


def test_a_batch_message_from_elsewhere_is_refused_by_the_producer() -> None:
    from tasks.batch import call_batch

    with pytest.raises(TypeError, match="call_tools"):
        call_batch.delay("everything", [{"id": "x", "tool": "echo", "arguments": {}}])


def test_retry_interrupted_false_reaches_the_worker_for_a_single_call_too(cluster: Any) -> None:
    """It was dropped at `.delay()` as if it were the default, and the worker then retried a
    timed-out call of a tool marked safe to rerun."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool
    from tasks.errors import ToolTimeoutError

    slow = {"duration": 3, "steps": 1}
    result = call_tool.delay(
        "everything", "trigger-long-running-operation", slow, timeout_s=0.5, retry_interrupted=False
    )
    with pytest.raises(ToolTimeoutError, match="not retried"):
        result.get(timeout=30)


def test_a_batch_that_expired_in_the_queue_revokes_each_of_its_calls(cluster: Any) -> None:
    """Celery drops an expired message (REVOKED under the batch's own id); each call of it must
    say so too, or its caller would wait for a result that never comes."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    import uuid
    from datetime import UTC, datetime, timedelta

    from celery.exceptions import TaskRevokedError

    from tasks import call_tool
    from tasks.batch import call_batch

    ids = [str(uuid.uuid4()) for _ in range(3)]
    items = [{"id": i, "tool": "echo", "arguments": {"message": "late"}, "kwargs": {}} for i in ids]
    past = datetime.now(UTC) - timedelta(seconds=5)
    call_batch._publish(("everything", items), {}, None, queue="mcp.everything", expires=past)
    for task_id in ids:
        with pytest.raises(TaskRevokedError):
            call_tool.AsyncResult(task_id).get(timeout=30)


def test_a_batch_for_a_server_this_worker_lacks_fails_each_call_clearly(cluster: Any) -> None:
    """The session itself is missing (a message from elsewhere, or a catalog gone stale): every
    call of the batch ends with the error, its claim released, instead of waiting forever."""
    import uuid

    from tasks import call_tool
    from tasks.batch import call_batch
    from tasks.errors import UnknownServerError

    ids = [str(uuid.uuid4()) for _ in range(2)]
    items = [{"id": i, "tool": "echo", "arguments": {"message": "x"}, "kwargs": {}} for i in ids]
    call_batch._publish(("not-on-this-worker", items), {}, None, queue="mcp.time")
    for task_id in ids:
        with pytest.raises(UnknownServerError, match="does not run MCP server"):
            call_tool.AsyncResult(task_id).get(timeout=30)


def test_broker_down_a_batch_is_a_clear_error() -> None:
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, free_port

    port = free_port()  # nothing listens there
    program = (
        "from tasks import call_tools\n"
        "from tasks.errors import BrokerUnavailableError\n"
        "calls = [{'server': 'time', 'tool': 'get_current_time', 'arguments': {'timezone': 'UTC'}}] * 2\n"
        "try:\n"
        "    call_tools(calls)\n"
        "except BrokerUnavailableError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "AGENTFUL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert time.monotonic() - started < 30
    assert done.stdout.startswith("BrokerUnavailableError "), (done.stdout, done.stderr[-2000:])
    assert f"127.0.0.1:{port}" in done.stdout


def test_a_running_batch_counts_as_its_calls_in_the_workers_load(cluster: Any) -> None:
    """The router's least-load reads `in_flight` from heartbeats: a batch of 10 running calls is
    10 there, not the one task it is."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    import os

    from tasks import call_tools
    from tasks.registry import Registry
    from workers.launcher import wait_for

    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    slow = {
        "server": "everything",
        "tool": "trigger-long-running-operation",
        "arguments": {"duration": 5, "steps": 1},
    }
    batch = call_tools([slow] * 10)
    seen: list[int] = []

    def loaded() -> bool:
        seen.append(max((w.in_flight for w in registry.alive().values()), default=0))
        return seen[-1] >= 10

    assert wait_for(loaded, 10, interval_s=0.2), f"highest in_flight seen: {max(seen)}"
    batch.get(timeout=60)
    assert wait_for(lambda: all(w.in_flight == 0 for w in registry.alive().values()), 10)
