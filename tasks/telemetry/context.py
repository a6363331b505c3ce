"""The trace id and the log fields of the call being handled, in context variables.

The trace id starts at the caller: a gateway request sets it (`trace_scope`), or the first
publish makes one. It travels in the task's headers (`TRACE_HEADER`), the worker puts it back in
the context for the task's logs, and the MCP server gets it in `_meta` (`META_KEY`).
A trace id is 32 hex digits, the W3C/OpenTelemetry form: with tracing on it is the trace's own id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

TRACE_HEADER = "agentful_trace_id"
META_KEY = "agentful/trace_id"

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

trace_id_var: ContextVar[str | None] = ContextVar("agentful_trace_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("agentful_task_id", default=None)
server_var: ContextVar[str | None] = ContextVar("agentful_server", default=None)
tool_var: ContextVar[str | None] = ContextVar("agentful_tool", default=None)

# Per process, not per call: which role this process plays and, on a worker, its node name.
_process = {"service": "agentful", "worker": ""}


def set_service(service: str) -> None:
    _process["service"] = service


def service() -> str:
    return _process["service"]


def set_worker(node: str) -> None:
    _process["worker"] = node


def worker() -> str:
    return _process["worker"]


def new_trace_id() -> str:
    return uuid.uuid4().hex


def valid_trace_id(value: object) -> str | None:
    """`value` as a trace id if it is one (32 lowercase hex, not all zero), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower().replace("-", "")
    return text if _TRACE_ID.match(text) and text != "0" * 32 else None


def from_traceparent(header: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`)."""
    parts = (header or "").split("-")
    return valid_trace_id(parts[1]) if len(parts) == 4 else None


def trace_id_from_meta(meta: object) -> str | None:
    """The trace id an MCP request's `_meta` brings: `traceparent`, else `agentful/trace_id`."""
    if not isinstance(meta, dict):
        return None
    return from_traceparent(meta.get("traceparent")) or valid_trace_id(meta.get(META_KEY))


def current_trace_id() -> str | None:
    return trace_id_var.get()


@contextmanager
def trace_scope(trace_id: str | None = None) -> Iterator[str]:
    """Run a block under a trace id (a new one if none or not valid): a gateway request, a job."""
    value = valid_trace_id(trace_id) or new_trace_id()
    token = trace_id_var.set(value)
    try:
        yield value
    finally:
        trace_id_var.reset(token)


@dataclass(frozen=True)
class CallContext:
    """The context of one call, carried by value to another thread (the session's loop)."""

    trace_id: str | None
    task_id: str | None
    server: str | None
    tool: str | None

    @classmethod
    def capture(cls) -> CallContext:
        return cls(trace_id_var.get(), task_id_var.get(), server_var.get(), tool_var.get())

    def apply(self) -> None:
        """Set these values in the current context (a fresh asyncio task's own copy)."""
        trace_id_var.set(self.trace_id)
        task_id_var.set(self.task_id)
        server_var.set(self.server)
        tool_var.set(self.tool)


def fields() -> dict[str, str | None]:
    """What every log line carries besides time, level and message."""
    return {
        "service": _process["service"],
        "trace_id": trace_id_var.get(),
        "task_id": task_id_var.get(),
        "server": server_var.get(),
        "tool": tool_var.get(),
        "worker": _process["worker"] or None,
    }
