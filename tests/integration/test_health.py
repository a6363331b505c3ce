"""Health checks broadcast to every worker: a frozen MCP server turns unhealthy after three
failed checks and healthy again after two good ones, as the registry shows."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CONFIG, HAS_NODE, need

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


def test_a_frozen_server_turns_unhealthy_then_healthy(cluster: Any, tmp_path: Path) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import app, health_check
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    config = json.loads(json.dumps(CONFIG))
    config["mcp"]["client"] = {
        "loadBalancing": {"healthCheck": {"unhealthyThreshold": 3, "healthyThreshold": 2}}
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    node = f"hc@{HOST}"
    registry = Registry(os.environ["AGENTFUL_BROKER_URL"])
    env = {"AGENTFUL_CONFIG": str(tmp_path / "config.json")}
    worker = WorkerProcess("hc@%h", ["everything"], env=env, log_path=tmp_path / "hc.log").start()

    def health() -> tuple[bool, int]:
        beat = registry.alive().get(node)
        h = beat.servers["everything"] if beat else None
        return (h.healthy, h.checks) if h else (True, -1)

    def check_once(expect_checks: int) -> bool:
        app.control.broadcast("agentful_health_check", arguments={"timeout_s": 0.5}, destination=[node])
        return wait_for(lambda: health()[1] >= expect_checks, 15)

    try:
        assert wait_for(lambda: registry.alive().get(node) is not None, 60)
        assert wait_for(lambda: registry.alive()[node].servers["everything"].state == "ready", 30)
        server = next(
            c
            for c in psutil.Process(worker.pid).children(recursive=True)
            if "index.js" in " ".join(c.cmdline())
        )
        result = health_check.delay(0.5).get(timeout=30)  # beat's task: a broadcast to every worker
        assert result["broadcast"] == "agentful_health_check"
        assert wait_for(lambda: health()[1] >= 1, 15) and health()[0] is True
        server.send_signal(signal.SIGSTOP)  # frozen: alive, but it answers nothing
        try:
            for n in (2, 3):
                assert check_once(n)
                assert health()[0] is True, f"unhealthy after only {n - 1} failed checks"
            assert check_once(4)
            assert health()[0] is False, "three failed checks in a row make it unhealthy"
        finally:
            server.send_signal(signal.SIGCONT)
        assert check_once(5) and health()[0] is False, "one good check is not enough"
        assert check_once(6) and health()[0] is True, "two good checks make it healthy again"
    finally:
        worker.stop()
