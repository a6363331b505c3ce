"""The worker registry: heartbeats, each worker's own queue, warm and hard stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


def registry() -> Any:
    from tasks.registry import Registry

    return Registry(os.environ["AGENTFUL_BROKER_URL"])


def test_workers_publish_heartbeats_with_servers_and_capacity(cluster: Any) -> None:
    from tasks import call_tool
    from workers.launcher import wait_for

    call_tool.delay("time", "get_current_time", {"timezone": "UTC"}).get(timeout=30)
    t1 = f"t1@{HOST}"
    assert f"t2@{HOST}" in registry().alive()
    assert wait_for(lambda: registry().alive()[t1].servers["crashes"].state == "failed", 10)
    assert wait_for(lambda: registry().alive()[t1].servers["time"].state == "ready", 30)
    beat = registry().alive()[t1]
    assert beat.capacity == 16 and beat.queue == f"worker.t1@{HOST}"
    assert beat.servers["time"].tools == 2
    assert beat.servers["crashes"].state == "failed"
    # the call counters reach the registry within a heartbeat or two
    assert wait_for(
        lambda: sum(registry().alive()[n].servers["time"].calls for n in (f"t1@{HOST}", f"t2@{HOST}")) > 0, 10
    )


def test_a_call_sent_to_a_workers_own_queue_runs_there(cluster: Any) -> None:
    from tasks import call_tool

    for node in (f"t1@{HOST}", f"t2@{HOST}"):
        r = call_tool.apply_async(("time", "get_current_time", {"timezone": "UTC"}), queue=f"worker.{node}")
        assert r.get(timeout=30)["worker"] == node


def test_warm_stop_withdraws_at_once_and_sigkill_expires(broker: str, tmp_path: Path) -> None:
    from workers.launcher import WorkerProcess, wait_for

    warm = WorkerProcess("warm@%h", ["time"], log_path=tmp_path / "warm.log").start()
    hard = WorkerProcess("hard@%h", ["time"], log_path=tmp_path / "hard.log").start()
    names = {f"warm@{HOST}", f"hard@{HOST}"}
    try:
        assert wait_for(lambda: names <= set(registry().alive()), 60), "workers never beat"
        assert warm.stop() == 0
        assert f"warm@{HOST}" not in registry().alive(), "a warm stop withdraws at once"
        hard.kill()
        assert wait_for(lambda: f"hard@{HOST}" not in registry().alive(), 10), (
            "SIGKILLed worker never expired"
        )
    finally:
        warm.stop()
        hard.kill()


def test_status_shows_the_cluster(cluster: Any) -> None:
    agentful = str(Path(sys.executable).parent / "agentful")
    done = subprocess.run([agentful, "status"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"t1@{HOST}" in done.stdout and "time:ready" in done.stdout
    assert "queued " in done.stdout and "mcp.time" in done.stdout
