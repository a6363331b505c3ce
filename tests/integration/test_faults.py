"""Faults of the path: a worker SIGKILLed, a broker that is down or absent, a broker restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import DATA_DIR, HAS_NODE, ROOT, free_port

pytestmark = pytest.mark.integration
CLIENT = str(ROOT / "tests" / "integration" / "client.py")


def run_client(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLIENT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_no_orphan_servers_after_the_worker_is_sigkilled(broker: str) -> None:
    from tasks import app
    from workers.launcher import WorkerProcess, wait_for

    # "hangs" ignores stdin EOF: only the death-signal guard can take it down with the worker.
    servers = ["time", "hangs", "everything"] if HAS_NODE else ["time", "hangs"]
    worker = WorkerProcess("orphans@%h", servers, log_path=DATA_DIR / "logs" / "orphans.log").start()
    name = f"orphans@{socket.gethostname()}"
    try:
        assert wait_for(lambda: bool(app.control.ping([name], timeout=0.5)), 60), "worker did not start"
        root = psutil.Process(worker.pid)

        def mcp_children() -> list[psutil.Process]:
            found = []
            for child in root.children(recursive=True):
                try:
                    cmd = " ".join(child.cmdline())
                except psutil.NoSuchProcess:
                    continue
                if any(k in cmd for k in ("mcp_server_time", "index.js stdio", "time.sleep(3600)")):
                    found.append(child)
            return found

        assert wait_for(lambda: len(mcp_children()) >= len(servers), 30), "servers did not start"
        servers_before = mcp_children()
    finally:
        worker.kill()  # SIGKILL to the worker's whole process group
    _, alive = psutil.wait_procs(servers_before, timeout=10)
    assert not alive, f"MCP servers outlived their SIGKILLed worker: {[p.pid for p in alive]}"


def test_broker_down_at_submit_is_a_clear_error_and_bounded() -> None:
    port = free_port()  # nothing listens there
    env = {**os.environ, "AGENTFUL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    started = time.monotonic()
    done = run_client(env, "call", "time", "get_current_time", '{"timezone": "UTC"}')
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "BrokerUnavailableError" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert elapsed < 30


def test_no_broker_configured_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENTFUL_BROKER_URL"}
    env["AGENTFUL_DATA_DIR"] = str(tmp_path)  # no embedded broker running there
    done = run_client(env, "call", "time", "get_current_time", '{"timezone": "UTC"}')
    assert done.returncode == 1
    assert "no broker configured" in done.stderr and "agentful up" in done.stderr


def test_queued_calls_survive_an_embedded_broker_restart(tmp_path: Path) -> None:
    """AOF on: a call queued with no worker running is still there after the broker restarts."""
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings
    from workers.launcher import WorkerProcess

    settings = Settings(data_dir=tmp_path)
    broker = EmbeddedBroker(settings)
    url = broker.start()
    env = {**os.environ, "AGENTFUL_BROKER_URL": url}
    try:
        submitted = run_client(env, "submit", "time", "get_current_time", '{"timezone": "Asia/Tokyo"}')
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        time.sleep(1.5)  # appendfsync everysec: let the AOF reach the disk
        broker.stop()
        broker = EmbeddedBroker(settings)
        assert broker.start() == url, "the restarted broker should reuse its port"
        worker = WorkerProcess("aof@%h", ["time"], env=env, log_path=tmp_path / "aof.log").start()
        try:
            got = run_client(env, "get", task_id, "60", timeout_s=90)
        finally:
            worker.stop()
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["structured_content"]["timezone"] == "Asia/Tokyo"
    finally:
        broker.stop()


def test_a_worker_started_later_serves_calls_queued_before_it(tmp_path: Path) -> None:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings
    from workers.launcher import WorkerProcess

    broker = EmbeddedBroker(Settings(data_dir=tmp_path))
    env = {**os.environ, "AGENTFUL_BROKER_URL": broker.start()}
    try:
        ids = [
            run_client(
                env, "submit", "git", "git_log", json.dumps({"repo_path": str(DATA_DIR / "repo")})
            ).stdout.strip()
            for _ in range(3)
        ]
        assert all(ids)
        worker = WorkerProcess("late@%h", ["git"], env=env, log_path=tmp_path / "late.log").start()
        try:
            for task_id in ids:
                got = run_client(env, "get", task_id, "60", timeout_s=90)
                assert got.returncode == 0, got.stderr
                assert "first" in json.loads(got.stdout)["content"][0]["text"]
        finally:
            worker.stop()
    finally:
        broker.stop()


def test_worker_process_init_returns_fast_with_a_slow_server(tmp_path: Path) -> None:
    """The prefork pool: sessions open after fork, without blocking process init."""
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings
    from workers.launcher import WorkerProcess

    broker = EmbeddedBroker(Settings(data_dir=tmp_path))
    env = {**os.environ, "AGENTFUL_BROKER_URL": broker.start()}
    worker = WorkerProcess(
        "prefork@%h", ["time", "hangs"], env=env, pool="prefork", concurrency=2, log_path=tmp_path / "pf.log"
    ).start()
    try:
        got = run_client(env, "call", "time", "get_current_time", '{"timezone": "UTC"}', "60", timeout_s=90)
        assert got.returncode == 0, got.stderr + (tmp_path / "pf.log").read_text()
        log = (tmp_path / "pf.log").read_text()
        assert "Timed out waiting for UP message" not in log
        assert "MCP runtime started in pid" in log
    finally:
        worker.stop()
        broker.stop()
