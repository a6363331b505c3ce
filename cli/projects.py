"""`agentful projects`: every project the cluster has a workspace for, where, and in what state.

The records come from the workers (workers/workspaces.py): each call that used a project's
workspace refreshes its host, commit, uncommitted changes and unpushed commits. A project whose
host died is re-homed by its next call: the record then names the host it moved from and what
was lost there (not pushed).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from tasks.errors import BrokerUnavailableError
from tasks.redisconn import connect


def collect() -> list[dict[str, Any]]:
    from tasks.api import catalog_store
    from tasks.registry import Registry
    from workers.workspaces import all_records

    store = catalog_store()
    if store is None:
        raise BrokerUnavailableError("agentful projects needs a Redis or Valkey broker or result backend")
    try:
        client = connect(store.url, socket_connect_timeout=3, socket_timeout=5)
        records = all_records(client)
        alive = Registry(store.url).alive()
    except redis.RedisError as exc:
        raise BrokerUnavailableError(f"cannot read the projects: {exc}") from exc
    return [asdict(r) | {"host_alive": r.node in alive} for r in records]


def run(*, as_json: bool, console: Console) -> None:
    rows = collect()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no project has a workspace yet (the first call for a project makes one)")
        return
    table = Table("project", "host", "commit", "dirty", "unpushed", "updated", "moved from", "lost")
    now = time.time()
    for r in rows:
        host = r["node"] if r["host_alive"] else f"{r['node']} (gone)"
        table.add_row(
            r["project"], host, (r["commit"] or "-")[:10], "yes" if r["dirty"] else "no",
            "-" if r["unpushed"] is None else str(r["unpushed"]), f"{now - r['updated_at']:.0f} s ago",
            r["moved_from"] or "", r["lost"] or "",
        )  # fmt: skip
    console.print(table)
