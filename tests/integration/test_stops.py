"""A worker stopped warmly hands back what it holds; a broker restart is survived by workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
