"""What travels between a worker and an MCP server, and how its faults are told apart.

A fault of the connection (the server died, the HTTP server went away) restarts the session
that every caller of the server shares; anything else a call raises (arguments the SDK cannot
serialise, a value the caller got wrong) is that one call's error and touches nobody else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, INVALID_PARAMS, METHOD_NOT_FOUND
from pydantic import BaseModel

from tasks.catalog import ToolSpec
from tasks.errors import InvalidArgumentsError, ToolProtocolError, UnknownToolError

# What a dead connection raises, at the stream, socket or HTTP layer.
_TRANSPORT_FAULTS: tuple[type[BaseException], ...] = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    OSError,
    httpx2.TransportError,
)


def describe(exc: BaseException) -> str:
    """One line for an exception, unwrapping the SDK's nested ExceptionGroups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MCPError) else text


def is_connection_fault(exc: BaseException) -> bool:
    """True when `exc` says the connection to the server is gone (all of a group, if grouped)."""
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(is_connection_fault(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(exc, _TRANSPORT_FAULTS)


def wire(model: BaseModel) -> dict[str, Any]:
    """An SDK model as it travels on the wire (camelCase, no nulls)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def request_error(server: str, what: str, exc: MCPError) -> Exception:
    """A server's JSON-RPC error to a resources/prompts request; args[1] keeps its code."""
    text = f"{server}: {what}: the server answered with error {exc.code}: {exc.message}"
    if exc.code == INVALID_PARAMS:
        return InvalidArgumentsError(text, exc.code)
    return ToolProtocolError(text, exc.code)


def protocol_error(server: str, tool: str, exc: MCPError) -> Exception:
    text = f"{server}/{tool}: the server answered with error {exc.code}: {exc.message}"
    if exc.code == INVALID_PARAMS:
        return InvalidArgumentsError(text)
    if exc.code == METHOD_NOT_FOUND:
        return UnknownToolError(text)
    return ToolProtocolError(text)


def call_error(server: str, tool: str, exc: BaseException) -> Exception:
    """A call that failed in the worker before or while it was sent, with the connection alive:
    the caller's error (most often arguments the SDK could not serialise), not the server's."""
    if isinstance(exc, (RecursionError, ValueError, TypeError)):
        return InvalidArgumentsError(f"{server}/{tool}: the arguments could not be sent: {describe(exc)}")
    return ToolProtocolError(f"{server}/{tool}: the call failed in the worker: {describe(exc)}")


class _WatchedReadStream:
    """The transport's read stream; its end (EOF, closed, broken) means the server is gone.

    The SDK fails in-flight requests when the connection closes but does not tell an idle
    owner; this proxy does, so a crashed idle server is restarted at once, not at the next call.
    A proxy and not a relay task: it costs one Python call per message, not a task switch.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@asynccontextmanager
async def watched(transport: Any, on_end: Callable[[], None]) -> AsyncIterator[Any]:
    """The transport's (read, write) streams, calling `on_end` when the read side ends."""
    async with transport as (read, write):
        yield _WatchedReadStream(read, on_end), write


async def list_all_tools(client: Client) -> dict[str, ToolSpec]:
    """Every tool the server lists, page by page."""
    tools: dict[str, ToolSpec] = {}
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        for t in page.tools:
            annotations = t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else {}
            tools[t.name] = ToolSpec(t.name, t.description or "", dict(t.input_schema or {}), annotations)
        cursor = page.next_cursor
        if not cursor:
            return tools
