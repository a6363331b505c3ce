"""A user's program for the chaos tier: submit a batch with `.delay()`, then wait for every result.

    python -m tests.chaos.driver --out FILE --calls N [--seconds S] [--projects P] [--prefix X]
                                 [--timeout T] [--no-idempotency] [--batch B] [--pace S]

It reads the broker, backend and config from the environment, as any program using agentful
does. Each call is `ledger.record(key=<prefix>-<i>)` with `idempotency_key` = the key and
`project_id` = one of P projects. A call `.delay()` refused (BrokerUnavailableError) is not
accepted, and so cannot be lost. With `--batch B` the calls go in batches of B through
`tasks.call_tools` (a refused batch: all of its calls refused). With `--pace S` it waits S
seconds between submissions (calls submitted across a fault, not before it). It writes FILE + ".submitted"
once every call is submitted,
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
    p.add_argument("--batch", type=int, default=0, help="submit through call_tools, B calls a batch")
    p.add_argument("--pace", type=float, default=0.0, help="seconds between submissions")
    return p.parse_args()


def _call(args: argparse.Namespace, i: int) -> dict[str, Any]:
    key = f"{args.prefix}-{i}"
    call = {
        "server": "ledger",
        "tool": "record",
        "arguments": {"key": key, "seconds": args.seconds},
        "idempotency_key": None if args.no_idempotency else key,
        "project_id": f"p{i % args.projects}" if args.projects else None,
    }
    return {k: v for k, v in call.items() if v is not None}


def submit(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> task id of the accepted calls, key -> why of the refused ones)."""
    from tasks import call_tool, call_tools
    from tasks.errors import BrokerUnavailableError

    accepted: dict[str, str] = {}
    refused: dict[str, str] = {}
    step = max(1, args.batch)
    for first in range(0, args.calls, step):
        batch = [_call(args, i) for i in range(first, min(args.calls, first + step))]
        keys = [c["arguments"]["key"] for c in batch]
        try:
            if args.batch:
                ids = [r.id for r in call_tools(batch).results]
            else:
                ids = [call_tool.delay(c.pop("server"), c.pop("tool"), c.pop("arguments"), **c).id
                       for c in batch]  # fmt: skip
            accepted.update(zip(keys, ids, strict=True))
        except BrokerUnavailableError as exc:
            refused.update((k, str(exc)) for k in keys)
        if args.pace:
            time.sleep(args.pace)
    return accepted, refused


def main() -> None:
    args = _args()
    from tasks import app

    submitted_at = time.time()
    accepted, refused = submit(args)
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
