"""`agentful status` against a real cluster: two workers, real MCP servers, the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import HAS_NODE, need
from tests.e2e.test_cli import AGENTFUL, agentful

pytestmark = pytest.mark.e2e
DECISIONS_KEY = "agentful:scaling:decisions"
PARKED = "mcp.zz-status-parked"  # a queue no worker consumes: its calls wait there


@pytest.fixture
def client(broker: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(broker)
    yield c
    c.close()


@pytest.fixture
def parked(cluster: Any, client: redis.Redis) -> Iterator[str]:
    """Three messages waiting in a queue nobody consumes, in two of kombu's priority bands."""
    from tasks import app

    for priority in (0, 0, 9):  # on Redis, 9 goes to its own list ("<queue>\\x06\\x169")
        app.send_task("agentful.ping", queue=PARKED, priority=priority)
    assert client.llen(PARKED) == 2, "the unprioritised messages share the queue's own list"
    yield PARKED
    client.delete(PARKED, PARKED + "\x06\x169")  # the messages; kombu's binding stays, as in real use


@pytest.fixture
def decision(client: redis.Redis) -> Iterator[dict[str, Any]]:
    entry = {
        "at": time.time() - 30,
        "direction": "up",
        "from": 2,
        "to": 3,
        "reason": "queue depth 140 > 100",
        "provider": "local",
        "triggers": {"queue_depth": 140},
    }
    raw = json.dumps(entry)
    client.lpush(DECISIONS_KEY, raw)
    yield entry
    client.lrem(DECISIONS_KEY, 0, raw)


def status_json() -> dict[str, Any]:
    done = agentful("status", "--json", timeout_s=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_json_shows_workers_servers_queues_and_decisions(
    cluster: Any, parked: str, decision: dict[str, Any], client: redis.Redis
) -> None:
    from tasks import app

    app.send_task("agentful.ping", queue="mcp.zz-status-gone")  # declared (bound), then emptied:
    client.delete("mcp.zz-status-gone")  # a queue nobody knows that holds nothing is not listed
    snap = status_json()
    nodes = {w["node"].split("@")[0] for w in snap["workers"]}
    assert {"t1", "t2"} <= nodes
    t1 = next(w for w in snap["workers"] if w["node"].startswith("t1@"))
    assert t1["capacity"] > 0 and t1["beat_age_s"] >= 0
    assert t1["servers"]["time"]["breaker"] == "closed"
    assert snap["servers"]["time"]["workers"] >= 2
    assert snap["servers"]["missing"]["ready"] == 0  # a server that cannot start is never ready
    # Every agentful queue: control, each server's, each worker's own, and one found by its binding.
    assert snap["queues"]["agentful"] == 0
    assert "mcp.time" in snap["queues"]
    assert f"worker.{t1['node']}" in snap["queues"]
    assert snap["queues"][PARKED] == 3  # both priority bands counted
    assert "mcp.zz-status-gone" not in snap["queues"]
    assert snap["scaling_decisions"][0] == decision


def test_status_shows_calls_in_flight(cluster: Any) -> None:
    need(HAS_NODE, "server-everything needs Node")
    from tasks import call_tool

    slow = call_tool.delay("everything", "trigger-long-running-operation", {"duration": 6, "steps": 3})
    try:
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            snap = status_json()
            if snap["in_flight"] >= 1 and snap["servers"]["everything"]["in_flight"] >= 1:
                seen = snap
        assert seen, "status never showed the running call"
        holder = [w for w in seen["workers"] if w["in_flight"] >= 1]
        assert holder and holder[0]["servers"]["everything"]["in_flight"] >= 1
    finally:
        slow.get(timeout=60)


def test_status_table_names_everything_it_shows(
    cluster: Any, parked: str, decision: dict[str, Any], client: redis.Redis
) -> None:
    from workers.launcher import wait_for

    assert wait_for(lambda: status_json()["servers"]["time"]["ready"] >= 2, 60), "time never ready"
    client.lpush(DECISIONS_KEY, "not json")
    try:
        done = agentful("status", timeout_s=60, env={**os.environ, "COLUMNS": "250"})
    finally:
        client.lrem(DECISIONS_KEY, 0, "not json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for words in ("t1@", "t2@", "time:ready", "all closed", PARKED, "queue depth 140 > 100", "2 -> 3"):
        assert words in out, words
    # The entry that is not JSON (pushed last, so newest) did not hide the good one.
    parked_row = next(line for line in out.splitlines() if PARKED in line)
    assert "3" in parked_row.split(PARKED)[1]


def test_status_watch_refreshes_until_interrupted(cluster: Any, parked: str) -> None:
    proc = subprocess.Popen(
        [AGENTFUL, "status", "--watch", "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        snapshots = 0
        deadline = time.monotonic() + 60
        while snapshots < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            snapshots += line.lstrip().startswith("broker ")
        assert snapshots == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_watch_json_prints_one_line_a_refresh(cluster: Any) -> None:
    proc = subprocess.Popen(
        [AGENTFUL, "status", "--watch", "--json", "--interval", "0.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        assert second["at"] > first["at"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_without_a_broker_says_so_and_exits_3(tmp_path: Any) -> None:
    env = {**os.environ, "AGENTFUL_BROKER_URL": "redis://127.0.0.1:1/0", "AGENTFUL_DATA_DIR": str(tmp_path)}
    done = agentful("status", env=env, timeout_s=60)
    assert done.returncode == 3
    assert "BrokerUnavailableError" in done.stderr and "127.0.0.1:1" in done.stderr


def test_status_watch_in_a_terminal_redraws_live(cluster: Any) -> None:
    """In a terminal --watch is rich's Live: the same screen redrawn in place (cursor moves)."""
    import pty
    import select

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "60", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [AGENTFUL, "status", "--watch", "--interval", "0.3"], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while seen.count(b"broker redis://") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 65536)
        assert seen.count(b"broker redis://") >= 3, seen[-2000:]
        assert b"\x1b[1A" in seen  # cursor up: the table is redrawn in place, not appended
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
