"""What a call returns, and the seam between the task layer and the worker runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict


class ToolResult(TypedDict):
    """The JSON result of `call_tool`: the MCP result plus where and how long it ran.

    `content` holds MCP content blocks as on the wire (`{"type": "text", "text": ...}`).
    `is_error` is the tool's own verdict: a tool that failed is a result, not an exception.
    """

    server: str
    tool: str
    content: list[dict[str, Any]]
    structured_content: dict[str, Any] | None
    is_error: bool
    worker: str
    duration_ms: float
    attempts: int


class ToolInfo(TypedDict):
    name: str
    description: str
    input_schema: dict[str, Any]


class ToolExecutor(Protocol):
    """Runs calls on a worker's live MCP sessions. The worker runtime registers one per process."""

    def call_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_s: float | None,
        meta: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], int]:
        """Return (the MCP CallToolResult as wire JSON, attempts it took)."""
        ...

    def list_tools(self, server: str) -> list[ToolInfo]: ...

    def servers(self) -> list[str]: ...

    def ready_tools(self) -> dict[str, list[ToolInfo]]:
        """The tools of every session that is connected now; never waits."""
        ...

    def probe(self, timeout_s: float) -> dict[str, dict[str, object]]:
        """Each server's state, a probe's latency (or its error) and restart count."""
        ...


_executor_factory: Callable[[], ToolExecutor] | None = None


def set_executor_factory(factory: Callable[[], ToolExecutor]) -> None:
    """The worker runtime says how to get this process's executor (made lazily, after fork)."""
    global _executor_factory
    _executor_factory = factory


def get_executor() -> ToolExecutor:
    if _executor_factory is None:
        raise RuntimeError(
            "no MCP runtime in this process: tool calls run inside an agentful worker "
            "(`agentful worker` or `celery -A tasks worker`)"
        )
    return _executor_factory()
