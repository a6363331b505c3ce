"""A user's program for the chaos tier: submit a batch with `.delay()`, then wait for every result.

    python -m tests.chaos.driver --out FILE --calls N [--seconds S] [--projects P] [--prefix X]
                                 [--timeout T] [--no-idempotency]

It reads the broker, backend and config from the environment, as any program using agentful
does. Each call is `ledger.record(key=<prefix>-<i>)` with `idempotency_key` = the key and
`project_id` = one of P projects. A call `.delay()` refused (BrokerUnavailableError) is not
accepted, and so cannot be lost. It writes FILE + ".submitted" once every call is submitted,
then polls the result backend (surviving a broker restart) until every accepted call has a
final state or the timeout passes, and writes FILE: one JSON object, key -> outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--projects", type=int, default=20)
    p.add_argument("--prefix", default="c")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--no-idempotency", action="store_true")
    return p.parse_args()


def main() -> None:
    args = _args()
    from tasks import app, call_tool
    from tasks.errors import BrokerUnavailableError

    accepted: dict[str, str] = {}  # key -> task id
    refused: dict[str, str] = {}
    submitted_at = time.time()
    for i in range(args.calls):
        key = f"{args.prefix}-{i}"
        try:
            r = call_tool.delay(
                "ledger",
                "record",
                {"key": key, "seconds": args.seconds},
                idempotency_key=None if args.no_idempotency else key,
                project_id=f"p{i % args.projects}" if args.projects else None,
            )
            accepted[key] = r.id
        except BrokerUnavailableError as exc:
            refused[key] = str(exc)
    (args.out.parent / (args.out.name + ".submitted")).write_text(
        json.dumps({"accepted": len(accepted), "refused": len(refused), "t": submitted_at})
    )
    backend = app.backend
    outcome: dict[str, dict[str, Any]] = {}
    pending = dict(accepted)
    deadline = time.monotonic() + args.timeout
    errors = 0
    while pending and time.monotonic() < deadline:
        keys = list(pending)
        try:
            raw = backend.client.mget([backend.get_key_for_task(pending[k]) for k in keys])
        except Exception as exc:  # the broker restarting: keep polling until the deadline
            errors += 1
            if errors == 1 or errors % 50 == 0:
                print(f"driver: result backend unreachable ({exc}); polling on", file=sys.stderr)
            time.sleep(0.2)
            continue
        now = time.time()
        for key, value in zip(keys, raw, strict=True):
            if not value:
                continue
            meta = json.loads(value)
            if meta.get("status") in FINAL:
                result = meta.get("result")
                worker = result.get("worker") if isinstance(result, dict) else None
                outcome[key] = {"state": meta["status"], "worker": worker, "t_done": now, "id": pending[key]}
                if args.projects:
                    outcome[key]["project"] = f"p{int(key.rsplit('-', 1)[1]) % args.projects}"
                if meta["status"] != "SUCCESS":
                    outcome[key]["error"] = str(result)[:300]
                del pending[key]
        time.sleep(0.1)
    for key, task_id in pending.items():
        outcome[key] = {"state": "PENDING", "id": task_id}
    for key, why in refused.items():
        outcome[key] = {"state": "REFUSED", "error": why[:300]}
    args.out.write_text(json.dumps(outcome))


if __name__ == "__main__":
    main()
