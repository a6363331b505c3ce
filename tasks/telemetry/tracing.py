"""OpenTelemetry tracing, on when an OTLP endpoint is configured.

AGENTFUL_OTEL_ENDPOINT (a collector's OTLP/HTTP base URL, e.g. http://otel:4318), or the
standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Spans go out as
OTLP/HTTP protobuf through a BatchSpanProcessor. opentelemetry-instrumentation-celery traces
the publish (producer) and the run (worker) and carries the context in the task headers;
`call_span` adds the MCP call under the run and writes its traceparent into `_meta`; the MCP SDK
then traces its own request (`MCP send tools/call <tool>`) under it and puts that span's
traceparent in `_meta`, so a server that traces continues the same trace. One trace:
`apply_async/agentful.call_tool` -> `run/agentful.call_tool` -> `mcp.call_tool` -> `MCP send ...`.

The publish hook (`connect_publish_hook`) puts the trace id in every task's headers, traced or
not: tasks.telemetry.hooks connects it at import, `setup` again after the instrumentor's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import before_task_publish
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tasks.telemetry import context

log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, Any] = {"provider": None, "instrumentor": None}
TRACER_NAME = "agentful"


def endpoint(agentful_endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL, or None when tracing is off."""
    if agentful_endpoint:
        url = agentful_endpoint.rstrip("/")
        return url if url.endswith("/v1/traces") else url + "/v1/traces"
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def enabled() -> bool:
    return _state["provider"] is not None


def setup(service: str, agentful_endpoint: str | None) -> bool:
    """Install the tracer provider and the Celery instrumentation once per process; False if off."""
    url = endpoint(agentful_endpoint)
    if url is None:
        return False
    with _lock:
        if _state["provider"] is not None:
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        trace.set_tracer_provider(provider)
        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        instrumentor.instrument(tracer_provider=provider)
        _state.update(provider=provider, instrumentor=instrumentor)
    connect_publish_hook()  # after the instrumentor's: the trace id in the headers is the trace's own
    log.info("OpenTelemetry tracing on: %s, spans to %s", name, url)
    return True


def shutdown() -> None:
    """Stop tracing in this process: the Celery hooks go, pending spans are sent, no more export.

    (OpenTelemetry's global provider can be set only once; a later `setup` uses that one.)"""
    with _lock:
        provider, instrumentor = _state["provider"], _state["instrumentor"]
        _state.update(provider=None, instrumentor=None)
    if instrumentor is not None:
        instrumentor.uninstrument()
    if provider is not None:
        provider.shutdown()


def flush(timeout_ms: int = 5000) -> None:
    provider = _state["provider"]
    if provider is not None:
        provider.force_flush(timeout_ms)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, if a span is active."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: the caller's trace id into the task's headers, or a new one."""
    if headers is None or headers.get(context.TRACE_HEADER):
        return
    headers[context.TRACE_HEADER] = context.current_trace_id() or current_trace_id() or context.new_trace_id()


def connect_publish_hook() -> None:
    """(Re)connect the publish hook last, so it runs after the OpenTelemetry producer span starts."""
    before_task_publish.disconnect(_on_publish, dispatch_uid="agentful-trace-id")
    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="agentful-trace-id")


@contextmanager
def call_span(server: str, tool: str, meta: dict[str, Any]) -> Iterator[Span | None]:
    """A client span around one MCP call; its traceparent is written into `meta`."""
    if not enabled():
        yield None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    attributes = {"mcp.server": server, "mcp.tool": tool, "rpc.system": "mcp", "rpc.method": "tools/call"}
    with tracer.start_as_current_span(
        "mcp.call_tool", kind=SpanKind.CLIENT, attributes=attributes, record_exception=True
    ) as span:
        propagate.inject(meta)  # traceparent (and tracestate) for a server that traces too
        yield span


def mark_error(span: Span | None, kind: str, message: str) -> None:
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"[:500]))
