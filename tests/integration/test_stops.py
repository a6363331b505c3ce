"""A worker stopped warmly hands back what it holds; a broker restart is survived by workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HAS_NODE, ROOT, need

pytestmark = pytest.mark.integration
HOST = socket.gethostname()
CLIENT = str(ROOT / "tests" / "integration" / "client.py")


def test_a_warm_stop_loses_no_call(cluster: Any, tmp_path: Path) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import call_tool
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    node = f"warmstop@{HOST}"
    worker = WorkerProcess("warmstop@%h", ["everything"], concurrency=2, log_path=tmp_path / "w.log").start()
    try:
        assert wait_for(lambda: node in registry.alive(), 60)
        assert wait_for(lambda: registry.alive()[node].servers["everything"].state == "ready", 30)
        slow = ("everything", "trigger-long-running-operation", {"duration": 1.5, "steps": 1})
        results = [call_tool.apply_async(slow, queue=f"worker.{node}") for _ in range(8)]
        assert wait_for(lambda: registry.alive()[node].in_flight >= 2, 20), "it never started the calls"
    finally:
        assert worker.stop(timeout_s=30) == 0  # SIGTERM: finish the running calls, hand back the rest
    values = [r.get(timeout=60) for r in results]
    assert all(v["is_error"] is False for v in values)
    ran_here = sum(1 for v in values if v["worker"] == node)
    assert 1 <= ran_here < 8, f"{ran_here} of 8 ran on the stopping worker"


def test_workers_reconnect_after_the_broker_restarts(tmp_path: Path) -> None:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings
    from workers.launcher import WorkerProcess

    settings = Settings(data_dir=tmp_path)
    broker = EmbeddedBroker(settings)
    url = broker.start()
    env = {**os.environ, "AGENTFUL_BROKER_URL": url}

    def call(zone: str) -> subprocess.CompletedProcess[str]:
        args = [
            sys.executable,
            CLIENT,
            "call",
            "time",
            "get_current_time",
            json.dumps({"timezone": zone}),
            "60",
        ]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=90, check=False)

    worker = WorkerProcess("phoenix@%h", ["time"], env=env, log_path=tmp_path / "phoenix.log").start()
    try:
        first = call("UTC")
        assert first.returncode == 0, first.stderr
        broker.stop()
        broker = EmbeddedBroker(settings)
        assert broker.start() == url
        again = call("Asia/Tokyo")
        assert again.returncode == 0, again.stderr + (tmp_path / "phoenix.log").read_text()[-2000:]
        result = json.loads(again.stdout)
        assert (
            result["worker"] == f"phoenix@{HOST}" and result["structured_content"]["timezone"] == "Asia/Tokyo"
        )
        assert worker.alive()
    finally:
        worker.stop()
        broker.stop()


def test_a_warm_stop_ends_within_its_bound_and_hands_a_long_call_to_another_worker(tmp_path: Path) -> None:
    """SIGTERM while a call runs past AGENTFUL_STOP_TIMEOUT_S: the stop turns hard at the bound,
    the worker retires its incarnation (fenced, what it held restored) and exits; the call runs
    again on another worker (the one window: it was inside the MCP server), exactly once more."""
    from tests.chaos.brokers import RedisProcess
    from tests.chaos.harness import ChaosCluster, read_ledger
    from workers.launcher import wait_for

    broker = RedisProcess.valkey(tmp_path / "broker").start()
    cluster = ChaosCluster(tmp_path, broker, workers=2, concurrency=2, env={"AGENTFUL_STOP_TIMEOUT_S": "3"})
    try:
        cluster.start()
        code = (
            "from tasks import call_tool\n"
            "r = call_tool.apply_async(('ledger', 'record', {'key': 'long', 'seconds': 8}), "
            f"queue='worker.{cluster.node(0)}')\n"
            "print(r.get(timeout=90)['worker'])\n"
        )
        waiter = subprocess.Popen(
            [sys.executable, "-c", code], env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert cluster.wait_executions(1, 30), "the long call never started"
        stopping = time.monotonic()
        exit_code = cluster.workers[0].stop(timeout_s=30)
        took = time.monotonic() - stopping
        assert exit_code == 1 and took < 8, f"warm stop: exit {exit_code} after {took:.1f} s (bound 3 s)"
        out, _ = waiter.communicate(timeout=60)
        assert out.strip() == cluster.node(1)
        runs = [line for line in read_ledger(Path(str(cluster.ledger) + ".jsonl")) if line["ev"] == "start"]
        assert [r["attempt"] for r in runs] == [1, 2], runs
        assert wait_for(lambda: "stopping hard" in (tmp_path / "worker0.log").read_text(), 5)
    finally:
        cluster.stop()


def test_a_broker_whose_last_port_is_taken_starts_on_another(tmp_path: Path) -> None:
    """The embedded broker reuses its last port; when something else holds it now (a broker a
    killed `agentful up` left behind), it starts on a free one instead of failing."""
    import redis

    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    settings = Settings(data_dir=tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (tmp_path / "broker").mkdir(parents=True)
        (tmp_path / "broker" / "port").write_text(str(taken))
        broker = EmbeddedBroker(settings)
        try:
            url = broker.start()
            assert url != f"redis://127.0.0.1:{taken}/0"
            assert redis.Redis.from_url(url).ping()
        finally:
            broker.stop()
