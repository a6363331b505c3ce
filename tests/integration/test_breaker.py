"""A worker's circuit breaker for a server: opens on transport faults, stops the worker taking
the server's shared queue, lets one probe through after its timeout, and closes again."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONFIG, HAS_NODE, need

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


def test_breaker_opens_on_the_servers_timeouts_then_probes_and_closes(cluster: Any, tmp_path: Path) -> None:
    """A timeout the caller chose (`timeout_s`) is the caller's bound, not the server's fault:
    it never opens the breaker that every caller of the server shares. Running past the
    server's own `callTimeoutS` does."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import app, call_tool
    from tasks.errors import CircuitOpenError, ToolTimeoutError
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    config = json.loads(json.dumps(CONFIG))
    config["mcp"]["client"] = {
        "circuitBreaker": {"threshold": 2, "timeout": 2000},
        "retry": {"maxAttempts": 1},
    }
    config["servers"]["everything"]["callTimeoutS"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    node = f"brk@{HOST}"
    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    env = {"AGENTFUL_CONFIG": str(tmp_path / "config.json")}
    worker = WorkerProcess("brk@%h", ["everything"], env=env, log_path=tmp_path / "brk.log").start()

    def consumes_shared_queue() -> bool:
        queues = (app.control.inspect([node], timeout=1.0).active_queues() or {}).get(node, [])
        return "mcp.everything" in {q["name"] for q in queues}

    def breaker() -> str:
        beat = registry.alive().get(node)
        return beat.servers["everything"].breaker if beat else "?"

    try:
        assert wait_for(lambda: node in registry.alive() and consumes_shared_queue(), 60)
        slow = ("everything", "trigger-long-running-operation", {"duration": 30, "steps": 30})
        for _ in range(3):
            r = call_tool.apply_async(slow, {"timeout_s": 0.3}, queue=f"worker.{node}")
            with pytest.raises(ToolTimeoutError, match=r"did not finish within 0\.3 s"):
                r.get(timeout=30)
        assert not wait_for(lambda: breaker() != "closed", 3), "a caller's own timeouts opened the breaker"
        for _ in range(2):
            r = call_tool.apply_async(slow, queue=f"worker.{node}")
            with pytest.raises(ToolTimeoutError):
                r.get(timeout=30)
        assert wait_for(lambda: breaker() == "open", 10), (
            "two server timeouts in a row should open the breaker"
        )
        assert wait_for(lambda: not consumes_shared_queue(), 10), "an open breaker stops the shared queue"
        fast = call_tool.apply_async(("everything", "echo", {"message": "x"}), queue=f"worker.{node}")
        with pytest.raises(CircuitOpenError) as info:
            fast.get(timeout=30)
        assert "circuit open" in str(info.value)
        # after 2 s one probe (a ping) goes through; the server is fine, so the breaker closes
        assert wait_for(lambda: breaker() == "closed", 20), "the probe should have closed the breaker"
        assert wait_for(consumes_shared_queue, 10), "a closed breaker resumes the shared queue"
        ok = call_tool.apply_async(("everything", "echo", {"message": "back"}), queue=f"worker.{node}")
        assert ok.get(timeout=30)["content"][0]["text"] == "Echo: back"
    finally:
        worker.stop()
