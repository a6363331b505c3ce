"""A measuring instrument for the failover and chaos benchmarks and tests: an MCP server that
records every real execution of its tools.

- `work(key, seconds)` sleeps, then appends `key` to the file named by LEDGER_FILE: a key that
  appears twice ran twice.
- `record(key, seconds)` is a side-effecting call as the chaos tier sees it: it appends a JSON
  line `{"ev": "start", ...}` to LEDGER_FILE + ".jsonl" and fsyncs it before it does anything,
  sleeps, then appends and fsyncs `{"ev": "end", ...}`. Each line carries the key, this server's
  pid, the time, and what the worker passed in `_meta` (`agentful/idempotency_key`,
  `agentful/attempt`, `agentful/task_id`). With LEDGER_DEDUPE=1 it is an idempotent tool: an
  execution whose idempotency key already ended is skipped (logged as "skip").
Not a demo server: real servers are in the demo and the tests.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("ledger")


@mcp.tool()
async def work(key: str, seconds: float = 0.2) -> str:
    """Sleep `seconds` (without blocking other calls), then record `key` in the ledger."""
    await anyio.sleep(seconds)
    with open(os.environ["LEDGER_FILE"], "a", encoding="utf-8") as ledger:
        ledger.write(key + "\n")
    return key


def _meta(ctx: Context) -> dict[str, Any]:
    raw: Any = ctx.request_context.meta
    if raw is None:
        return {}
    dump = getattr(raw, "model_dump", None)
    data: dict[str, Any] = dump(mode="json", by_alias=True, exclude_none=True) if dump else dict(raw)
    return data


def _append(line: dict[str, Any]) -> None:
    fd = os.open(os.environ["LEDGER_FILE"] + ".jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _ended(idem: str) -> bool:
    try:
        with open(os.environ["LEDGER_FILE"] + ".jsonl", encoding="utf-8") as ledger:
            return any(f'"idem": {json.dumps(idem)}' in line and '"ev": "end"' in line for line in ledger)
    except FileNotFoundError:
        return False


@mcp.tool()
async def record(key: str, ctx: Context, seconds: float = 0.2) -> str:
    """A side effect with a ledger: record the start (fsynced), sleep, record the end."""
    meta = _meta(ctx)
    line = {
        "key": key,
        "pid": os.getpid(),
        "idem": meta.get("agentful/idempotency_key"),
        "attempt": meta.get("agentful/attempt"),
        "task": meta.get("agentful/task_id"),
    }
    if os.environ.get("LEDGER_DEDUPE") == "1" and line["idem"] and _ended(str(line["idem"])):
        _append({"ev": "skip", "t": time.time(), **line})
        return key
    _append({"ev": "start", "t": time.time(), **line})
    await anyio.sleep(seconds)
    _append({"ev": "end", "t": time.time(), **line})
    return key


if __name__ == "__main__":
    mcp.run("stdio")
