"""Where a worker runs an MCP call: metrics, the OpenTelemetry span and `_meta` in one place.

    with observe_call(server, tool, meta) as call:
        result = run_on_session(..., meta=call.meta)
        call.done(result)

`call.meta` is the caller's `_meta` plus `agentful/trace_id` and, with tracing on, the
span's `traceparent`. The outcome is counted once: ok, tool_error (the tool's own is_error) or
error (an exception, also counted in mcp_errors_total under its class name).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tasks.telemetry import context, tracing
from tasks.telemetry.metrics import ERRORS, REQUEST_DURATION, REQUESTS


@dataclass
class CallObservation:
    meta: dict[str, Any]
    status: str = "ok"
    context: context.CallContext = field(default_factory=context.CallContext.capture)

    def done(self, result: dict[str, Any]) -> None:
        """The call returned `result` (CallToolResult as wire JSON)."""
        self.status = "tool_error" if result.get("isError") else "ok"


@contextmanager
def observe_call(server: str, tool: str, meta: dict[str, Any] | None) -> Iterator[CallObservation]:
    out: dict[str, Any] = dict(meta or {})
    trace_id = context.current_trace_id()
    if trace_id:
        out.setdefault(context.META_KEY, trace_id)
    started = time.perf_counter()
    with tracing.call_span(server, tool, out) as span:
        call = CallObservation(out)
        try:
            yield call
        except Exception as exc:
            kind = type(exc).__name__
            REQUESTS.labels(server, tool, "error").inc()
            ERRORS.labels(server, tool, kind).inc()
            REQUEST_DURATION.labels(server, tool).observe(time.perf_counter() - started)
            tracing.mark_error(span, kind, str(exc))
            raise
        REQUESTS.labels(server, tool, call.status).inc()
        REQUEST_DURATION.labels(server, tool).observe(time.perf_counter() - started)
        if span is not None and call.status == "tool_error":
            span.set_attribute("mcp.is_error", True)


def set_connection(server: str, ready: bool) -> None:
    """A session's state changed: count it in mcp_active_connections."""
    from tasks.telemetry.metrics import ACTIVE_CONNECTIONS

    ACTIVE_CONNECTIONS.labels(server).set(1 if ready else 0)
