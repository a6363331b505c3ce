"""A measuring instrument for bench/failover.py: an MCP server that records every execution.

`work(key, seconds)` sleeps, then appends `key` to the file named by LEDGER_FILE: a key that
appears twice ran twice. Not a demo server: real servers are in the demo and the tests.
"""

from __future__ import annotations

import os

import anyio
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("ledger")


@mcp.tool()
async def work(key: str, seconds: float = 0.2) -> str:
    """Sleep `seconds` (without blocking other calls), then record `key` in the ledger."""
    await anyio.sleep(seconds)
    with open(os.environ["LEDGER_FILE"], "a", encoding="utf-8") as ledger:
        ledger.write(key + "\n")
    return key


if __name__ == "__main__":
    mcp.run("stdio")
