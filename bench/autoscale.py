"""Flood the queue and watch beat's autoscaler add workers, drain it, and remove them again.

    python bench/autoscale.py [--calls 48] [--seconds 1.0] [--interval 1] [--cooldown 3]

An embedded Valkey; a real `celery beat` with the local-process provider (min 1, max 3, short
timings: the queue-depth trigger at 4, idle timeout 2 s; CPU and memory triggers out of reach so
the machine's own load does not decide); autoscaled workers run the ledger server (threads pool,
2 slots, prefetch 1). Once beat has its minimum worker up, `--calls` calls of `--seconds` each are
submitted at once. Last line: one JSON object with start_workers, peak_workers,
seconds_to_scale_up (first submit to beat's first "up" decision), seconds_to_new_worker (first
submit to the first added worker answering a ping), seconds_to_drain (first submit to the last
result), seconds_to_min (last result to back at the minimum), end_workers, lost and duplicated
(from the ledger the MCP server writes), evaluation_interval_s, cooldown_s, and the changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PREFIX = "bench"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each call works")
    parser.add_argument("--interval", type=float, default=1.0, help="autoscaling.intervalS")
    parser.add_argument("--cooldown", type=float, default=3.0, help="autoscaling.cooldownS")
    parser.add_argument("--max", type=int, default=3, help="autoscaling.maxInstances")
    return parser.parse_args()


def _setup(args: argparse.Namespace) -> tuple[Any, str, Path]:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings, reset_caches

    data = Path(tempfile.mkdtemp(prefix="agentful-autoscale-"))
    broker = EmbeddedBroker(Settings(data_dir=data / "broker"))
    url = broker.start()
    (data / "ledger.txt").touch()
    config = {
        "mcp": {"client": {"loadBalancing": {"healthCheck": {"interval": 600_000}}}},
        "servers": {
            "ledger": {
                "command": sys.executable,
                "args": [str(ROOT / "bench" / "ledger_server.py")],
                "env": {"LEDGER_FILE": str(data / "ledger.txt")},
            }
        },
        "autoscaling": {
            "enabled": True,
            "provider": "local",
            "intervalS": args.interval,
            "minInstances": 1,
            "maxInstances": args.max,
            "cooldownS": args.cooldown,
            "idleTimeoutS": 2,
            "windowS": 10,
            "triggers": {"queueDepth": 4, "cpuPercent": 100, "memoryPercent": 100, "p95LatencyS": 120},
            "local": {"concurrency": 2, "prefetch": 1, "namePrefix": PREFIX},
        },
    }
    (data / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=url, AGENTFUL_CONFIG=str(data / "config.json"), AGENTFUL_DATA_DIR=str(data)
    )
    reset_caches()  # settings read so far (importing cli.broker reads them) predate the broker
    return broker, url, data


class Watch:
    """The autoscaled workers as the provider's state dir shows them, with the peak seen."""

    def __init__(self, data: Path) -> None:
        from beat.providers.local import LocalProcessProvider

        self.provider = LocalProcessProvider(
            servers=["ledger"],
            state_dir=data / "autoscale" / "local",
            log_dir=data / "logs",
            name_prefix=PREFIX,
        )
        self.peak = 0

    def managed(self) -> int:
        n = self.provider.current()
        self.peak = max(self.peak, n)
        return n


def _drain(results: list[Any], watch: Watch, deadline_s: float) -> tuple[float, float | None, set[int]]:
    """Wait for every result: when the last came, when an added worker first answered, failures."""
    from tasks import app

    first = set(watch.provider.nodes())
    new_worker_at: float | None = None
    pending = list(results)
    deadline = time.monotonic() + deadline_s
    while pending and time.monotonic() < deadline:
        watch.managed()
        added = set(watch.provider.nodes()) - first
        if new_worker_at is None and added and app.control.ping(destination=sorted(added), timeout=0.3):
            new_worker_at = time.time()
        pending = [r for r in pending if not r.ready()]
        time.sleep(0.1)
    drained_at = time.time()
    failed = set()
    for i, r in enumerate(results):
        try:
            r.get(timeout=1)
        except Exception:
            failed.add(i)
    return drained_at, new_worker_at, failed


def main() -> None:
    args = _args()
    broker, url, data = _setup(args)

    import redis

    from beat.autoscale import DECISIONS_KEY
    from tasks import call_tool
    from tasks.api import cluster_catalog
    from workers.launcher import wait_for

    watch = Watch(data)
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(data / "schedule"), "-l", "INFO"]
    beat = subprocess.Popen(cmd, cwd=ROOT, stdout=(data / "beat.log").open("ab"), stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    try:
        up = wait_for(lambda: watch.managed() >= 1, 30)
        if not up or not wait_for(lambda: "ledger" in cluster_catalog(refresh=True), 60):
            raise SystemExit(f"beat did not bring up its first worker; see {data}/beat.log")
        start_workers = watch.managed()
        flood_at = time.time()
        work = [{"key": f"k{i}", "seconds": args.seconds} for i in range(args.calls)]
        results = [call_tool.delay("ledger", "work", w) for w in work]
        drained_at, new_worker_at, failed = _drain(results, watch, 5 * args.calls * args.seconds + 60)
        back = lambda: watch.managed() <= 1 and len(watch.provider.records()) <= 1  # noqa: E731
        wait_for(back, 20 + 3 * args.cooldown, interval_s=0.2)
        at_min = time.time()
        decisions = [json.loads(d) for d in client.lrange(DECISIONS_KEY, 0, -1)][::-1]
        ups = [d["at"] for d in decisions if d["direction"] == "up" and d["at"] >= flood_at]
        ran = Counter((data / "ledger.txt").read_text().split())
        out = {
            "calls": args.calls,
            "call_s": args.seconds,
            "start_workers": start_workers,
            "peak_workers": watch.peak,
            "seconds_to_scale_up": round(ups[0] - flood_at, 2) if ups else None,
            "seconds_to_new_worker": None if new_worker_at is None else round(new_worker_at - flood_at, 2),
            "seconds_to_drain": round(drained_at - flood_at, 2),
            "seconds_to_min": round(at_min - drained_at, 2),
            "end_workers": watch.managed(),
            "lost": len(failed | {i for i in range(args.calls) if ran[f"k{i}"] == 0}),
            "duplicated": sum(1 for n in ran.values() if n > 1),
            "evaluation_interval_s": args.interval,
            "cooldown_s": args.cooldown,
            "changes": [
                f"{d['direction']} {d['from']}->{d['to']}" for d in decisions if d["direction"] != "hold"
            ],
        }
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        watch.provider.stop_all()
        client.close()
        broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
