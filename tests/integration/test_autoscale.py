"""End to end, short timings: a real `celery beat` with the local-process provider (min 1, max
3), a flood of slow calls: workers are added, the queue drains, after the cooldown the idle
workers are removed down to the minimum, and every call ran exactly once (the MCP server keeps
a ledger of what it ran)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
CALLS = 36
CALL_S = 1.0


def autoscale_config(tmp: Path, prefix: str) -> dict[str, Any]:
    """The config beat and its workers read: one slow server, autoscaling with short timings.
    CPU, memory, latency and error-rate triggers are out of reach: this machine's load must not
    decide, and only queue depth scales."""
    return {
        "mcp": {"client": {"loadBalancing": {"healthCheck": {"interval": 600_000}}}},
        "servers": {
            "ledger": {
                "command": sys.executable,
                "args": [str(ROOT / "bench" / "ledger_server.py")],
                "env": {"LEDGER_FILE": str(tmp / "ledger.txt")},
            }
        },
        "autoscaling": {
            "enabled": True,
            "provider": "local",
            "intervalS": 1,
            "minInstances": 1,
            "maxInstances": 3,
            "cooldownS": 3,
            "idleTimeoutS": 2,
            "windowS": 10,
            "triggers": {
                "queueDepth": 4,
                "cpuPercent": 100,
                "memoryPercent": 100,
                "p95LatencyS": 60,
                "errorRatePercent": 100,
            },
            "local": {"concurrency": 2, "prefetch": 1, "namePrefix": prefix},
        },
    }


def start_beat(tmp: Path, config: dict[str, Any], broker: str) -> subprocess.Popen[bytes]:
    (tmp / "config.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "AGENTFUL_CONFIG": str(tmp / "config.json"),
        "AGENTFUL_DATA_DIR": str(tmp),
        "AGENTFUL_BROKER_URL": broker,
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(tmp / "schedule"), "-l", "INFO"]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=(tmp / "beat.log").open("ab"), stderr=subprocess.STDOUT
    )


def test_flood_scales_up_drains_and_scales_down_losing_nothing(broker: str, tmp_path: Path) -> None:
    from beat.autoscale import DECISIONS_KEY, LAST_CHANGE_KEY
    from beat.lock import LEASE_KEY
    from beat.providers.local import LocalProcessProvider
    from tasks import call_tool
    from tasks.api import cluster_catalog
    from workers.launcher import wait_for

    client = redis.Redis.from_url(broker)
    client.delete(DECISIONS_KEY, LAST_CHANGE_KEY, LEASE_KEY)
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    provider = LocalProcessProvider(
        servers=["ledger"], state_dir=tmp_path / "autoscale" / "local", log_dir=tmp_path, name_prefix=prefix
    )
    beat = start_beat(tmp_path, autoscale_config(tmp_path, prefix), broker)
    peak = 0

    def managed() -> int:
        nonlocal peak
        n = provider.current()
        peak = max(peak, n)
        return n

    try:
        # Beat brings the cluster to its minimum by itself.
        assert wait_for(lambda: managed() == 1, 30), f"no worker started; see {tmp_path}/beat.log"
        assert wait_for(lambda: "ledger" in cluster_catalog(refresh=True), 60), (
            "the worker never served ledger"
        )
        results = [
            call_tool.delay("ledger", "work", {"key": f"k{i}", "seconds": CALL_S}) for i in range(CALLS)
        ]
        # The queue is deep: workers are added up to the maximum.
        assert wait_for(lambda: managed() == 3, 30), f"did not scale up to 3 (peak {peak}); see beat.log"
        values = [r.get(timeout=90) for r in results]  # every call answers
        assert [v["content"][0]["text"] for v in values] == [f"k{i}" for i in range(CALLS)]
        # Idle after the flood: back to the minimum, one per cooldown, never below it.
        assert wait_for(lambda: managed() == 1 and len(provider.records()) == 1, 40), (
            "did not scale down to 1"
        )
        ledger = (tmp_path / "ledger.txt").read_text().split()
        assert sorted(ledger) == sorted(f"k{i}" for i in range(CALLS)), "a call was lost or ran twice"
        decisions = [json.loads(d) for d in client.lrange(DECISIONS_KEY, 0, -1)][::-1]  # oldest first
        changes = [(d["direction"], d["from"], d["to"]) for d in decisions if d["direction"] != "hold"]
        assert changes[:3] == [("up", 0, 1), ("up", 1, 2), ("up", 2, 3)], changes
        assert changes[3:] == [("down", 3, 2), ("down", 2, 1)], changes
        downs = [d for d in decisions if d["direction"] == "down"]
        assert all(d["code"] == "idle" and len(d["stop"]) == 1 for d in downs)
        ups = [d for d in decisions if d["direction"] == "up" and d["from"] > 0]
        assert all(d["triggers"]["queue_depth"]["fired"] for d in ups)
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        provider.stop_all()
        client.delete(DECISIONS_KEY, LAST_CHANGE_KEY, LEASE_KEY)
        client.close()
    assert peak == 3


def test_two_beats_started_by_mistake_only_one_scales(broker: str, tmp_path: Path) -> None:
    """Two real `celery beat` processes on one broker, each with its own state dir (as on two
    hosts): one leads and starts the minimum's worker, the other waits and starts none."""
    from beat.autoscale import DECISIONS_KEY, LAST_CHANGE_KEY
    from beat.lock import LEASE_KEY
    from beat.providers.local import LocalProcessProvider
    from workers.launcher import wait_for

    client = redis.Redis.from_url(broker)
    client.delete(DECISIONS_KEY, LAST_CHANGE_KEY, LEASE_KEY)
    prefix = f"two{uuid.uuid4().hex[:6]}"
    dirs = [tmp_path / "a", tmp_path / "b"]
    providers = []
    beats = []
    try:
        for d in dirs:
            d.mkdir()
            config = autoscale_config(d, prefix)
            config["servers"] = {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]}}
            config["autoscaling"]["cooldownS"] = 600
            providers.append(
                LocalProcessProvider(
                    servers=["time"], state_dir=d / "autoscale" / "local", log_dir=d, name_prefix=prefix
                )
            )
            beats.append(start_beat(d, config, broker))

        def total() -> int:
            return sum(p.current() for p in providers)

        assert wait_for(lambda: total() >= 1, 30), "neither beat started a worker"
        logs = lambda: [(d / "beat.log").read_text() for d in dirs]  # noqa: E731
        assert wait_for(lambda: all("lead" in text for text in logs()), 20), logs()
        # Several intervals later, still one: the waiting beat never acted.
        assert not wait_for(lambda: total() > 1, 4)
        leading = ["beat: leading" in text for text in logs()]
        waiting = ["this one waits" in text for text in logs()]
        assert sorted(leading) == [False, True] and waiting == [not x for x in leading], logs()
        decisions = [json.loads(d) for d in client.lrange(DECISIONS_KEY, 0, -1)]
        changes = [(d["direction"], d["from"], d["to"]) for d in decisions if d["direction"] != "hold"]
        assert changes == [("up", 0, 1)], decisions
    finally:
        for b in beats:
            b.terminate()
            b.wait(timeout=20)
        for p in providers:
            p.stop_all()
        client.delete(DECISIONS_KEY, LAST_CHANGE_KEY, LEASE_KEY)
        client.close()
