"""Kill a worker under load; every call it held or had queued must complete elsewhere.

    python bench/failover.py [--calls 150] [--workers 3] [--seconds 0.3]

An embedded Valkey, N workers (threads pool, concurrency 4) each running the ledger server,
round-robin routing so every worker holds calls in flight and in its own queue. Each call has
an idempotency key. One worker's whole process group is SIGKILLed while it holds calls; the run
waits for every result. The ledger says how many calls ran more than once. Last line: one JSON
object with calls, lost, duplicated, recovery_s (kill to the last completion of any call: an
upper bound on the time to recover the dead worker's calls), and more.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup() -> tuple[Any, str, Path, Path]:
    """A fresh embedded broker and the ledger server's config, in the environment."""
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="agentful-failover-"))
    broker = EmbeddedBroker(Settings(data_dir=data))
    url = broker.start()
    ledger = data / "ledger.txt"
    ledger.touch()
    config = {
        "mcp": {"client": {"loadBalancing": {"algorithm": "round-robin"}}},
        "servers": {
            "ledger": {
                "command": sys.executable,
                "args": [str(ROOT / "bench" / "ledger_server.py")],
                "env": {"LEDGER_FILE": str(ledger)},
            }
        },
    }
    (data / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=url, AGENTFUL_CONFIG=str(data / "config.json"), AGENTFUL_DATA_DIR=str(data)
    )

    return broker, url, data, ledger


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3, help="how long each call works")
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds after the first submit")
    return parser.parse_args()


def main() -> None:
    args = _args()

    broker, url, data, ledger = _setup()

    from celery.result import ResultSet

    from tasks import call_tool
    from tasks.registry import Registry
    from workers.launcher import WorkerProcess, wait_for

    host = socket.gethostname()
    workers = [
        WorkerProcess(
            f"fo{i}@%h", ["ledger"], concurrency=4, loglevel="WARNING", log_path=data / f"fo{i}.log"
        ).start()
        for i in range(args.workers)
    ]
    victim = workers[0]
    victim_node = f"fo0@{host}"
    try:
        registry = Registry(url)
        ready = wait_for(lambda: len(registry.alive()) == args.workers, 60)
        assert ready, f"workers did not come up; logs in {data}"
        call_tool.delay("ledger", "work", {"key": "warm", "seconds": 0}).get(timeout=60)
        done_at: dict[str, float] = {}
        results = []
        started = time.monotonic()
        for i in range(args.calls):
            arguments = {"key": f"call-{i}", "seconds": args.seconds}
            results.append(call_tool.delay("ledger", "work", arguments, idempotency_key=f"failover-{i}"))
        print(f"{args.calls} calls submitted; killing {victim_node} in {args.kill_after} s", file=sys.stderr)
        killed_at: list[float] = []

        def kill() -> None:
            time.sleep(max(0.0, args.kill_after - (time.monotonic() - started)))
            victim.kill()
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill)
        killer.start()

        def on_result(task_id: str, value: Any) -> None:
            done_at[task_id] = time.monotonic()

        try:
            ResultSet(results).join_native(timeout=120, propagate=False, callback=on_result)
        except Exception as exc:
            print(f"not every call completed: {exc}", file=sys.stderr)
        killer.join()
        kill_t = killed_at[0]
        outcomes = {r.id: r.state for r in results}
        by_worker = Counter(
            r.result["worker"] for r in results if r.state == "SUCCESS" and isinstance(r.result, dict)
        )
        runs = Counter(line.strip() for line in ledger.read_text().splitlines() if line.startswith("call-"))
    finally:
        for w in workers:
            w.stop()
        broker.stop()
    lost = sum(1 for state in outcomes.values() if state != "SUCCESS")
    after_kill = [t for t in done_at.values() if t > kill_t]
    out = {
        "calls": args.calls,
        "workers": args.workers,
        "lost": lost,
        "duplicated": sum(1 for n in runs.values() if n > 1),
        "ran": len(runs),
        "recovery_s": round(max(after_kill) - kill_t, 3) if after_kill else 0.0,
        "completed_by_victim_before_kill": by_worker.get(victim_node, 0),
        "completed_after_kill": len(after_kill),
        "by_worker": dict(sorted(by_worker.items())),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
