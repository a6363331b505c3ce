"""A tiny stdio MCP server whose `meta` tool returns the `_meta` of the request that called it.

    python -m tests.servers.meta_echo        (or: python tests/servers/meta_echo.py)

Used to show what a worker passes to an MCP server: trace id, task id, traceparent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

server = MCPServer("meta-echo")


@server.tool()
def meta(ctx: Context) -> str:
    """Return this request's `_meta` as a JSON object."""
    raw: Any = ctx.request_context.meta
    if raw is None:
        return "{}"
    dump = getattr(raw, "model_dump", None)
    data = dump(mode="json", by_alias=True, exclude_none=True) if dump else dict(raw)
    return json.dumps(data, sort_keys=True)


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then say so: a slow tool."""
    import anyio

    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def region(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
    """Say the region: its argument is declared as the `Mcp-Param-Region` header (2026-07-28),
    which a server checks against the body before it runs the call."""
    return region


_running = 0


@server.tool()
async def overlap(seconds: float) -> int:
    """Sleep; return how many calls of this tool were running when this one began (itself too):
    the largest answer over a batch is how many of its calls the server had at once."""
    import anyio

    global _running
    _running += 1
    try:
        seen = _running
        await anyio.sleep(seconds)
        return seen
    finally:
        _running -= 1


@server.tool()
def fail(reason: str = "failing on purpose") -> str:
    """Raise: a tool error the worker reports as is_error."""
    raise ValueError(reason)


if __name__ == "__main__":
    server.run("stdio")
