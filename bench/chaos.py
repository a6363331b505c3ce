"""Every fault, several runs, on each broker: what was lost, what ran twice, how long recovery took.

    python bench/chaos.py [--runs 3] [--calls 600] [--seconds 0.2] [--brokers valkey,redis,rabbitmq]
                          [--scenarios sigkill,pause,broker_restart,server_kill,warm_stop]

Each run: a fresh broker process (Valkey from the embedded broker's wheel, the machine's
redis-server, or a private RabbitMQ node with a Valkey result backend), 3 workers (threads x16)
and beat, the ledger MCP server (every execution fsynced to a ledger), a driver submitting the
batch with `.delay()` (or with `call_tools`, B calls a message: `--batch B`; an idempotency key
per call, 20 projects); the fault at one third of the executions. Counted from the ledger and
the driver, never from the cluster (tests/chaos/harness.py).
The last line is one JSON object: per scenario and broker `runs`, `calls`, `lost`, `duplicated`,
`in_window`, `recovery_s`, `failover_s` and `window_done_s` (worst; see tests/chaos/harness.py),
and `lost_total`, `duplicated_total`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.brokers import make_broker  # noqa: E402
from tests.chaos.harness import SCENARIOS, ChaosCluster, Run, run_scenario  # noqa: E402


def run_once(kind: str, scenario: str, args: argparse.Namespace, tmp: Path) -> Run:
    broker, backend = make_broker(kind, tmp)
    broker.start()
    if backend is not None:
        backend.start()
    cluster = ChaosCluster(tmp, broker, backend_url=backend.url if backend else None, beat=True)
    try:
        cluster.start()
        return run_scenario(
            cluster,
            scenario,
            calls=args.calls,
            seconds=args.seconds,
            pause_s=args.pause_s,
            down_s=args.down_s,
            timeout_s=args.timeout,
            batch=args.batch,
        )
    finally:
        cluster.stop()
        if backend is not None:
            backend.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--calls", type=int, default=600)
    p.add_argument("--seconds", type=float, default=0.5, help="how long each call works")
    p.add_argument("--brokers", default="valkey,redis,rabbitmq")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--pause-s", type=float, default=25.0)
    p.add_argument("--down-s", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--batch", type=int, default=0, help="submit through call_tools, this many calls a batch")
    args = p.parse_args()
    table: dict[str, dict[str, Any]] = {}
    lost_total = duplicated_total = 0
    for kind in args.brokers.split(","):
        for scenario in args.scenarios.split(","):
            row: dict[str, Any] = {"runs": 0, "calls": 0, "lost": 0, "duplicated": 0, "in_window": 0}
            row["recovery_s"] = 0.0
            for n in range(args.runs):
                tmp = Path(tempfile.mkdtemp(prefix=f"agentful-chaos-{kind}-{scenario}-{n}-"))
                run = run_once(kind, scenario, args, tmp)
                outcome = run.outcome
                extra: dict[str, Any] = {"survivors": run.survivors, "in_flight_after": run.in_flight}
                if run.stop_s is not None:
                    extra |= {"stop_s": round(run.stop_s, 2), "stop_exit": run.stop_exit}
                if run.back_at is not None:
                    extra["done_after_broker_back_s"] = round(max(0.0, outcome.last_done - run.back_at), 3)
                print(
                    f"  {kind}/{scenario} run {n + 1}: {json.dumps(outcome.to_json() | extra)}",
                    file=sys.stderr,
                )
                row["runs"] += 1
                for k in ("calls", "lost", "duplicated", "in_window"):
                    row[k] += getattr(outcome, k)
                row["recovery_s"] = max(row["recovery_s"], round(outcome.recovery_s, 3))
                for k in ("failover_s", "window_done_s"):
                    value = getattr(outcome, k)
                    if value is not None:
                        row[k] = max(row.get(k, 0.0), round(value, 3))
            table[f"{scenario}/{kind}"] = row
            lost_total += row["lost"]
            duplicated_total += row["duplicated"]
    print(json.dumps({"scenarios": table, "lost_total": lost_total, "duplicated_total": duplicated_total}))


if __name__ == "__main__":
    main()
