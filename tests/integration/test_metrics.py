"""Prometheus metrics from a real prefork worker and a real beat, scraped over real HTTP.

The worker (prefork, 2 children, each recycled after 4 calls) counts in multiprocess mode: the
exporter in its main process sums every child's counts, a child that exited keeps its calls
counted and drops out of the live gauges. Beat measures queue depths from the broker and worker
health from the registry when it is scraped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DATA_DIR
from tests.integration.telemetry_env import json_lines, write_config

pytestmark = pytest.mark.integration
NODE = "tmetrics@%h"
WORK_DIR = DATA_DIR / "tmetrics"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def target_port(role_file: str) -> int | None:
    path = WORK_DIR / "metrics" / "targets" / role_file
    if not path.exists():
        return None
    target = json.loads(path.read_text())[0]["targets"][0]
    return int(target.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def metrics_worker(broker: str) -> Iterator[int]:
    from tasks.api import cluster_catalog
    from workers.launcher import WorkerProcess, wait_for

    class Recycling(WorkerProcess):
        def command(self) -> list[str]:
            return [*super().command(), "--max-tasks-per-child=4"]

    config = write_config("telemetry-metrics")
    env = {
        "AGENTFUL_CONFIG": str(config),
        "AGENTFUL_DATA_DIR": str(WORK_DIR),
        "AGENTFUL_METRICS_PORT": "auto",
    }
    worker = Recycling(NODE, ["meta"], env=env, pool="prefork", concurrency=2, prefetch=1,
                       log_path=DATA_DIR / "logs" / "tmetrics.log").start()  # fmt: skip
    node = NODE.replace("%h", socket.gethostname())
    try:
        assert wait_for(lambda: target_port(f"worker-{node}.json"), 60), "no file_sd target written"
        port = target_port(f"worker-{node}.json")
        assert port is not None

        def ready() -> bool:
            entry = cluster_catalog(refresh=True).get("meta")
            return entry is not None and value(scrape(port), "mcp_active_connections", server="meta") == 2

        assert wait_for(ready, 60), "the two pool children did not connect to meta-echo"
        yield port
    finally:
        worker.stop()
    assert not (WORK_DIR / "metrics" / "targets" / f"worker-{node}.json").exists(), "target file left behind"


def test_call_metrics_count_every_call_of_every_pool_child(metrics_worker: int) -> None:
    from tasks import call_tool
    from tasks.errors import ToolTimeoutError

    before = scrape(metrics_worker)
    with ThreadPoolExecutor(8) as pool:  # 8 calls of 0.3 s at once: both children run some
        results = list(
            pool.map(lambda _: call_tool.delay("meta", "sleep", {"seconds": 0.3}).get(timeout=60), range(8))
        )
    assert all(not r["is_error"] for r in results)
    failed = call_tool.delay("meta", "fail", {"reason": "no"}).get(timeout=30)
    assert failed["is_error"]
    with pytest.raises(ToolTimeoutError):
        call_tool.delay("meta", "sleep", {"seconds": 5}, timeout_s=0.3).get(timeout=60)

    after = scrape(metrics_worker)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mcp_requests_total", server="meta", tool="sleep", status="ok") == 8
    assert delta("mcp_requests_total", server="meta", tool="fail", status="tool_error") == 1
    assert delta("mcp_requests_total", server="meta", tool="sleep", status="error") == 1
    assert delta("mcp_errors_total", server="meta", tool="sleep", kind="ToolTimeoutError") == 1
    assert delta("mcp_request_duration_seconds_count", server="meta", tool="sleep") == 9
    assert delta("mcp_request_duration_seconds_sum", server="meta", tool="sleep") >= 8 * 0.3
    # 10 calls at 4 per child: children were recycled, and the live sessions are still 2.
    node = NODE.replace("%h", socket.gethostname())
    files = list((WORK_DIR / "metrics" / "proc" / node).glob("counter_*.db"))
    assert len(files) >= 3, f"expected counts from recycled children too, got {files}"
    from workers.launcher import wait_for

    assert wait_for(lambda: value(scrape(metrics_worker), "mcp_active_connections", server="meta") == 2, 30)


def test_beat_measures_queue_depths_and_worker_health(metrics_worker: int) -> None:
    from tasks import app
    from workers.launcher import wait_for

    config = {"servers": {"parked": {"command": "true"}}}
    config_path = DATA_DIR / "telemetry-beat.json"
    config_path.write_text(json.dumps(config))
    env = {
        **os.environ,
        "AGENTFUL_CONFIG": str(config_path),
        "AGENTFUL_DATA_DIR": str(WORK_DIR),
        "AGENTFUL_METRICS_PORT": "auto",
        "AGENTFUL_LOG_FORMAT": "json",
    }
    (WORK_DIR / "beat").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "beat",
        "-s",
        str(WORK_DIR / "beat" / "schedule"),
        "-l",
        "INFO",
    ]
    log = (DATA_DIR / "logs" / "tmetrics-beat.log").open("ab")
    beat = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for priority in (None, None, 0, 5):  # 5 lands in another Redis list (priority band 3-5)
            app.send_task("agentful.ping", queue="mcp.parked", priority=priority)
        beat_file = f"beat-beat@{os.uname().nodename}.json"
        assert wait_for(lambda: target_port(beat_file), 30), "beat wrote no file_sd target"
        port = target_port(beat_file)
        assert port is not None
        samples = scrape(port)
        assert value(samples, "mcp_task_queue_depth", queue="mcp.parked") == 4
        assert ("mcp_task_queue_depth", (("queue", "agentful"),)) in samples
        node = NODE.replace("%h", socket.gethostname())
        assert value(samples, "mcp_worker_health", worker=node) == 1
        assert value(samples, "mcp_breaker_state", worker=node, server="meta") == 0
        assert value(samples, "mcp_worker_capacity", worker=node) == 2
        assert value(samples, "mcp_workers") >= 1
        # Beat's own log is JSON lines too.
        lines = json_lines(DATA_DIR / "logs" / "tmetrics-beat.log")
        beat_lines = [line for line in lines if line["service"] == "agentful-beat"]
        assert any("metrics for Prometheus" in line["message"] for line in beat_lines)
    finally:
        beat.terminate()
        beat.wait(timeout=15)
        log.close()
        import redis  # nothing consumes mcp.parked: leave no messages behind

        client = redis.Redis.from_url(str(app.conf.broker_url))
        client.delete("mcp.parked", *(f"mcp.parked\x06\x16{b}" for b in (3, 6, 9)))
        client.close()
