"""A server no live worker runs: the gateway answers within a bound instead of waiting for ever,
drops the server's tools from tools/list (list_changed) and takes them back with its first
worker; a call abandoned that way is cancelled, and does not run when a worker returns."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp
import mcp_types as types

from tests.conftest import CONFIG, DATA_DIR, ROOT, SERVERS
from tests.gateway.conftest import RunningGateway


def text(result: types.CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, types.TextContent)
    return first.text


def test_a_server_whose_workers_all_die_is_answered_within_a_bound(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    from tasks.api import catalog_store
    from tasks.catalog import CATALOG_KEY
    from workers.launcher import WorkerProcess, wait_for

    ledger = tmp_path / "ledger.txt"
    solo = {
        "command": sys.executable,
        "args": [str(ROOT / "bench" / "ledger_server.py")],
        "env": {"LEDGER_FILE": str(ledger)},
    }
    extra = {**CONFIG, "servers": {**SERVERS, "solo": solo}}
    path = DATA_DIR / "config-solo.json"
    path.write_text(json.dumps(extra))
    gw = gateway_factory({"refreshS": 0.3, "unservedWaitS": 2}, extra={"servers": extra["servers"]})

    def start() -> WorkerProcess:
        return WorkerProcess(
            "solo@%h", ["solo"], env={"AGENTFUL_CONFIG": str(path)}, log_path=tmp_path / "solo.log"
        ).start()

    worker = start()
    try:
        gw.wait_for_tools("solo__record")

        async def go() -> tuple[float, str, float, str, list[str]]:
            async with mcp.Client(gw.url, mode="2026-07-28", read_timeout_seconds=120) as client:
                async with anyio.create_task_group() as tg:
                    outcome: dict[str, Any] = {}

                    async def long_call() -> None:
                        result = await client.call_tool("solo__record", {"key": "abandoned", "seconds": 60})
                        outcome["at"], outcome["result"] = time.monotonic(), result

                    tg.start_soon(long_call)
                    await anyio.to_thread.run_sync(
                        lambda: wait_for(lambda: ledger.with_suffix(".txt.jsonl").exists(), 30)
                    )
                    killed = time.monotonic()
                    await anyio.to_thread.run_sync(worker.kill)
                gone_after = outcome["at"] - killed
                names = [t.name for t in (await client.list_tools()).tools]
                asked = time.monotonic()
                again = await client.call_tool("solo__record", {"key": "nobody", "seconds": 0})
                return gone_after, text(outcome["result"]), time.monotonic() - asked, text(again), names

        gone_after, abandoned, asked_s, refused, names = anyio.run(go)
        # Death declared within ~3-5 s of the kill, then the gateway's 2 s bound: not 3600 s.
        assert gone_after < 15, f"the waiting client was answered {gone_after:.1f} s after the kill"
        assert "no live worker runs MCP server 'solo'" in abandoned and "cancelled" in abandoned
        assert "solo__record" not in names, "a server nobody runs stays out of tools/list"
        assert asked_s < 5 and "no live worker runs MCP server 'solo'" in refused
        # The worker comes back: its tools with it; the abandoned call was cancelled for good.
        worker = start()
        gw.wait_for_tools("solo__record")
        time.sleep(3)  # long enough for a restored copy of the abandoned call to start, were it to
        starts = [
            json.loads(line)["key"] for line in ledger.with_suffix(".txt.jsonl").read_text().splitlines()
        ]
        assert starts.count("abandoned") == 1, starts
        assert "nobody" not in starts
    finally:
        worker.stop()
        store = catalog_store()
        assert store is not None
        store._client.hdel(CATALOG_KEY, "solo")
