"""Calls through the real embedded Valkey and two real `celery worker` processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil
import pytest

from tests.conftest import HAS_NODE, REPO, need

pytestmark = pytest.mark.integration


def test_call_returns_the_tools_result(cluster: Any) -> None:
    from tasks import call_tool

    result = call_tool.delay("time", "get_current_time", {"timezone": "UTC"}).get(timeout=30)
    assert result["is_error"] is False
    assert result["structured_content"]["timezone"] == "UTC"
    assert result["server"] == "time" and result["tool"] == "get_current_time"
    assert result["worker"].split("@")[0] in {"t1", "t2"}
    assert result["attempts"] == 1
    assert result["duration_ms"] > 0


def test_a_tools_own_error_is_a_result_not_an_exception(cluster: Any) -> None:
    from tasks import call_tool

    result = call_tool.delay("time", "get_current_time", {"timezone": "Mars/Olympus_Mons"}).get(timeout=30)
    assert result["is_error"] is True
    assert "Mars/Olympus_Mons" in result["content"][0]["text"]


def test_git_status_sees_the_scratch_repo(cluster: Any) -> None:
    from tasks import call_tool

    (REPO / "new-file.txt").write_text("hello\n")
    result = call_tool.delay("git", "git_status", {"repo_path": str(REPO)}).get(timeout=30)
    assert result["is_error"] is False
    assert "new-file.txt" in result["content"][0]["text"]


def test_list_tools_shows_the_whole_cluster(cluster: Any) -> None:
    from tasks import call_tool, list_tools

    call_tool.delay("git", "git_log", {"repo_path": str(REPO)}).get(timeout=30)  # sessions are up
    listing = list_tools.delay().get(timeout=30)
    assert {"get_current_time", "convert_time"} <= {t["name"] for t in listing["time"]}
    assert "git_status" in {t["name"] for t in listing["git"]}
    schema = next(t for t in listing["time"] if t["name"] == "get_current_time")["input_schema"]
    assert "timezone" in schema["properties"]
    one = list_tools.delay("git").get(timeout=30)
    assert list(one) == ["git"]


def test_everything_over_stdio_and_http(cluster: Any) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool

    for server in ("everything", "everything-http"):
        echo = call_tool.delay(server, "echo", {"message": f"via {server}"}).get(timeout=30)
        assert echo["content"][0]["text"] == f"Echo: via {server}"
        total = call_tool.delay(server, "get-sum", {"a": 40, "b": 2}).get(timeout=30)
        assert "42" in total["content"][0]["text"]


def test_many_calls_in_flight_spread_over_both_workers(cluster: Any) -> None:
    from celery.result import ResultSet

    from tasks import call_tool

    results = [call_tool.delay("time", "get_current_time", {"timezone": "UTC"}) for _ in range(80)]
    values = ResultSet(results).get(timeout=60)
    assert len(values) == 80 and all(not v["is_error"] for v in values)
    assert {v["worker"].split("@")[0] for v in values} == {"t1", "t2"}


@pytest.mark.parametrize(
    ("server", "tool", "arguments", "error", "words"),
    [
        ("nosuch", "x", {}, "UnknownServerError", ["nosuch", "time"]),
        ("time", "nosuch", {}, "UnknownToolError", ["nosuch", "get_current_time"]),
        ("time", "get_current_time", {"timezone": 5}, "InvalidArgumentsError", ["timezone", "string"]),
        ("time", "get_current_time", {}, "InvalidArgumentsError", ["timezone", "required"]),
        ("time", "get_current_time", ["UTC"], "InvalidArgumentsError", ["JSON object"]),
        ("time", "get_current_time", {"timezone": "x" * 70_000}, "PayloadTooLargeError", ["65536"]),
    ],
)
def test_bad_calls_fail_before_they_are_queued(
    cluster: Any, published: list[str], server: str, tool: str, arguments: Any, error: str, words: list[str]
) -> None:
    from tasks import call_tool, errors

    call_tool.delay("time", "get_current_time", {"timezone": "UTC"}).get(timeout=30)  # catalog published
    published.clear()
    with pytest.raises(getattr(errors, error)) as info:
        call_tool.delay(server, tool, arguments)
    for word in words:
        assert word in str(info.value)
    assert published == [], "a rejected call must not reach the broker"


def test_a_server_that_fails_to_start_names_the_cause(cluster: Any) -> None:
    from tasks import call_tool
    from tasks.errors import ServerStartError

    crashing = call_tool.delay("crashes", "anything", {})
    with pytest.raises(ServerStartError) as crashed:
        crashing.get(timeout=30)
    assert "boom: MCP_TOKEN is not set" in str(crashed.value)
    assert crashing.retries == 0, "a permanent error is not retried"
    with pytest.raises(ServerStartError) as missing:
        call_tool.delay("missing", "anything", {}).get(timeout=30)
    assert "/nonexistent/bin/mcp-server" in str(missing.value) and "not found" in str(missing.value)


def test_an_http_server_that_refuses_is_transient_and_retried(cluster: Any) -> None:
    from tasks import call_tool
    from tasks.errors import ServerUnavailableError

    refused = call_tool.delay("down-http", "anything", {})
    with pytest.raises(ServerUnavailableError) as info:
        refused.get(timeout=60)
    assert "down-http" in str(info.value) and "gave up after 3 attempts" in str(info.value)
    assert refused.retries == 2


def test_a_server_that_hangs_at_start_times_out(cluster: Any) -> None:
    from tasks import call_tool
    from tasks.errors import ServerNotReadyError, ServerStartError

    started = time.monotonic()
    with pytest.raises((ServerStartError, ServerNotReadyError)) as info:
        call_tool.delay("hangs", "anything", {}).get(timeout=30)
    assert "hangs" in str(info.value)
    assert time.monotonic() - started < 20


def test_a_tool_that_hangs_is_cancelled_at_its_timeout(cluster: Any) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool
    from tasks.errors import ToolTimeoutError

    started = time.monotonic()
    slow = call_tool.delay(
        "everything", "trigger-long-running-operation", {"duration": 60, "steps": 60}, timeout_s=1
    )
    with pytest.raises(ToolTimeoutError) as info:
        slow.get(timeout=30)
    assert "trigger-long-running-operation" in str(info.value) and "cancel" in str(info.value)
    assert "gave up after 3 attempts" in str(info.value), "a timeout is transient: retried with backoff"
    assert slow.retries == 2
    assert time.monotonic() - started < 30
    again = call_tool.delay("everything", "echo", {"message": "still here"}).get(timeout=30)
    assert again["content"][0]["text"] == "Echo: still here"


def _server_pids(workers: list[Any], needle: str) -> list[int]:
    pids = []
    for w in workers:
        for child in psutil.Process(w.pid).children(recursive=True):
            try:
                if needle in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
    return pids


def test_a_server_killed_mid_call_is_restarted_and_the_call_retried(cluster: Any) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool

    call_tool.delay("everything", "echo", {"message": "warm"}).get(timeout=30)
    before = _server_pids(cluster, "index.js stdio")
    assert before, "no server-everything process found under the workers"
    running = call_tool.delay("everything", "trigger-long-running-operation", {"duration": 2, "steps": 2})

    def kill_servers() -> None:
        for pid in before:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()

    killer = threading.Timer(0.8, kill_servers)
    killer.start()
    result = running.get(timeout=60)
    killer.join()
    assert result["is_error"] is False
    assert result["attempts"] == 2
    after = _server_pids(cluster, "index.js stdio")
    assert after and not set(after) & set(before)


def test_an_idempotency_key_runs_a_call_once(cluster: Any, published: list[str]) -> None:
    import uuid

    from tasks import call_tool

    key = f"commit-{uuid.uuid4()}"
    first = call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, idempotency_key=key)
    value = first.get(timeout=30)
    published.clear()
    again = call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, idempotency_key=key)
    assert again.id == first.id
    assert again.get(timeout=30) == value  # the stored result, to the microsecond of its duration
    assert published == [], "a call whose result is stored must not be queued again"
    other = call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, idempotency_key=key + "-2")
    assert other.id != first.id
    other.get(timeout=30)
