"""Many workers on one machine and one broker: routing, registry and failover stay correct.

    python bench/scale.py --workers 100     # several minutes on 2 cores
    python bench/scale.py --workers 20      # a quick look

An embedded Valkey; N `celery worker` processes, solo pool (one call at a time, the lightest),
without gossip and mingle, each with a session to mcp-server-time. Measured: how many register,
memory per worker (the Celery process, and its MCP server apart), broker commands per second
while idle (heartbeats, held-call tags, the consumers' polling), the router's decision time with
N workers registered, calls with project affinity spread and all completed, and one worker
SIGKILLed with its calls moved; then a bare Celery worker with the same pool on the same broker,
for `rss_ratio`. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup(n: int) -> tuple[Any, str, Path]:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="agentful-scale-"))
    broker = EmbeddedBroker(Settings(data_dir=data))
    url = broker.start()
    config = {
        "mcp": {"client": {"loadBalancing": {"algorithm": "least-load"}}},
        "servers": {
            "time": {"command": sys.executable, "args": ["-m", "mcp_server_time"], "startTimeoutS": 300}
        },
    }
    (data / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=url, AGENTFUL_CONFIG=str(data / "config.json"), AGENTFUL_DATA_DIR=str(data)
    )
    return broker, url, data


def _rss_mb(workers: list[Any]) -> tuple[float, float]:
    import psutil

    celery: list[int] = []
    servers: list[int] = []
    for w in workers:
        try:
            proc = psutil.Process(w.pid)
            celery.append(proc.memory_info().rss)
            servers.extend(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    mb = 1024 * 1024
    return statistics.mean(celery) / mb, (statistics.mean(servers) / mb if servers else 0.0)


def _broker_ops_per_s(url: str, seconds: float) -> float:
    import redis

    client = redis.Redis.from_url(url)
    before = int(client.info("stats")["total_commands_processed"])
    time.sleep(seconds)
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 2) / seconds


def _route_us(url: str, n: int) -> tuple[float, float]:
    """The router's decision time over n decisions, many projects (cache misses included)."""
    import redis

    from tasks.registry import Registry
    from tasks.router import ClusterRouter, RedisAffinity

    router = ClusterRouter(
        Registry(url), RedisAffinity(redis.Redis.from_url(url), ttl_s=60), algorithm="least-load"
    )
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        router.queue_for("time", f"scale-{i % 50}")
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    broker, url, data = _setup(args.workers)

    from celery.result import ResultSet

    from tasks import call_tool
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    registry = Registry(url)
    started = time.monotonic()
    workers = []
    try:
        for i in range(args.workers):
            workers.append(
                WorkerProcess(f"s{i}@%h", ["time"], pool="solo", concurrency=1, loglevel="WARNING").start()
            )
            if i % 10 == 9:  # two cores: let each batch boot before the next

                def booted(enough: int = i - 5) -> bool:
                    return len(registry.alive()) >= enough

                wait_for(booted, 120, interval_s=1.0)
        ready = wait_for(
            lambda: (
                sum(1 for b in registry.alive().values() if b.servers["time"].state == "ready")
                == args.workers
            ),
            600,
            interval_s=2.0,
        )
        boot_s = time.monotonic() - started
        registered = len(registry.alive())
        print(
            f"{registered} registered ({'all ready' if ready else 'not all ready'}) in {boot_s:.0f} s",
            file=sys.stderr,
        )
        rss_worker, rss_server = _rss_mb(workers)
        ops = _broker_ops_per_s(url, 10.0)
        route_p50, route_p99 = _route_us(url, 5000)
        t0 = time.monotonic()
        results = [
            call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, project_id=f"proj-{i % 40}")
            for i in range(args.calls)
        ]
        values = ResultSet(results).get(timeout=300, propagate=False)
        calls_s = time.monotonic() - t0
        ok = [v for v in values if isinstance(v, dict) and not v["is_error"]]
        per_project: dict[str, set[str]] = {}
        for i, v in enumerate(values):
            if isinstance(v, dict):
                per_project.setdefault(f"proj-{i % 40}", set()).add(v["worker"])
        victim = workers[-1]
        victim.kill()
        killed = time.monotonic()
        gone = wait_for(lambda: len(registry.alive()) == registered - 1, 30)
        detect_s = time.monotonic() - killed
        for w in workers:
            w.kill()
        from bench.run import bare_worker_rss_mb

        rss_bare = bare_worker_rss_mb(data, url, "solo", 1)
    finally:
        for w in workers:
            w.kill()
        broker.stop()
    out = {
        "workers": args.workers,
        "registered": registered,
        "all_ready": ready,
        "boot_s": round(boot_s, 1),
        "rss_mb_per_worker": round(rss_worker, 1),
        "rss_mb_per_mcp_server": round(rss_server, 1),
        "rss_mb_celery_worker": round(rss_bare, 1),
        "rss_ratio": round(rss_worker / rss_bare, 2),
        "broker_ops_per_s": round(ops, 1),
        "route_p50_us": round(route_p50, 1),
        "route_p99_us": round(route_p99, 1),
        "calls": args.calls,
        "calls_ok": len(ok),
        "calls_per_s": round(args.calls / calls_s, 1),
        "workers_used": len(Counter(v["worker"] for v in ok)),
        "projects_on_one_worker": sum(1 for ws in per_project.values() if len(ws) == 1),
        "projects": len(per_project),
        "dead_detected_s": round(detect_s, 2) if gone else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
