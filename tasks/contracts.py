"""What a call returns, and the seam between the task layer and the worker runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from tasks.relay import RelayTarget


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
    annotations: NotRequired[dict[str, Any]]  # readOnlyHint, idempotentHint, ... when the tool has them


ProgressFn = Callable[[float, float | None, str | None], None]
"""A progress listener: (progress, total or None, message or None)."""


class BatchCall(NamedTuple):
    """One call of a batch (tasks/batch.py), as `ToolExecutor.call_many` runs it."""

    tool: str
    arguments: dict[str, Any]
    timeout_s: float | None
    meta: dict[str, Any]
    rerun: bool
    still_owner: Callable[[], bool] | None


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
        on_progress: ProgressFn | None = None,
        cancelled: Callable[[], bool] | None = None,
        still_owner: Callable[[], bool] | None = None,
        rerun: bool = False,
        project: str | None = None,
        relay: RelayTarget | None = None,
    ) -> tuple[dict[str, Any], int]:
        """Return (the MCP CallToolResult as wire JSON, attempts it took).

        `on_progress(progress, total, message)` is called on the caller's thread for each
        progress notification, in order, all before this returns. When `cancelled()` turns
        true, the MCP call is cancelled (the server is sent notifications/cancelled) and
        `celery.exceptions.TaskRevokedError` is raised. When this worker's heartbeat lease is
        stale (it may have been declared dead while it was paused), `still_owner()` is asked,
        off the event loop, right before the call is sent; false raises
        `tasks.delivery.claims.LostClaim` and nothing is sent. `rerun`: a call the server
        crashed under is run once more on its new session. `project`: the session of a
        per-project server to use (required for those).
        """
        ...

    def call_many(
        self, server: str, calls: list[BatchCall], *, project: str | None = None
    ) -> list[tuple[dict[str, Any], int, float] | BaseException]:
        """Every call at once on the server's session (one hand-off to the worker's loop); for
        each, in order, `call_tool`'s (result, attempts) and the call's milliseconds, or the
        exception `call_tool` would raise."""
        ...

    def list_tools(self, server: str) -> list[ToolInfo]: ...

    def rerun_safe(self, server: str, tool: str) -> bool:
        """Whether the tool says a second run does no harm (read-only or idempotent)."""
        ...

    # Resources and prompts: MCP wire dicts (by_alias JSON of the SDK's models). A server
    # without the capability answers with empty lists.
    def list_resources(self, server: str) -> dict[str, list[dict[str, Any]]]:
        """{"resources": [...], "resource_templates": [...]}"""
        ...

    def read_resource(self, server: str, uri: str) -> dict[str, Any]:
        """{"contents": [...]}"""
        ...

    def list_prompts(self, server: str) -> dict[str, list[dict[str, Any]]]:
        """{"prompts": [...]}"""
        ...

    def get_prompt(self, server: str, name: str, arguments: dict[str, str] | None) -> dict[str, Any]:
        """{"description": str | None, "messages": [...]}"""
        ...

    def complete(
        self, server: str, ref: dict[str, Any], argument: dict[str, str], context: dict[str, str] | None
    ) -> dict[str, Any]:
        """{"completion": {"values": [...], "total"?: int, "hasMore"?: bool}}"""
        ...

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
