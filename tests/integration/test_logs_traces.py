"""Trace ids and OpenTelemetry through a real worker (threads pool) and a real MCP server.

The caller's trace id travels in the task headers, appears in the worker's JSON log lines of
that task, and reaches the MCP server in `_meta` (the meta-echo server returns it). With an
OTLP endpoint configured (a real local HTTP server decoding OTLP/HTTP protobuf), the publish,
the task run and the MCP call are one trace.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA_DIR
from tests.integration.telemetry_env import Recorder, json_lines, recorder, write_config

pytestmark = pytest.mark.integration
NODE = "tlogs@%h"


@pytest.fixture(scope="module")
def traced_worker(broker: str) -> Iterator[tuple[Recorder, Path]]:
    from tasks.api import cluster_catalog
    from workers.launcher import WorkerProcess, wait_for

    config = write_config("telemetry-logs")
    log_path = DATA_DIR / "logs" / "tlogs.log"
    log_path.unlink(missing_ok=True)
    with recorder() as otlp:
        env = {
            "AGENTFUL_CONFIG": str(config),
            "AGENTFUL_LOG_FORMAT": "json",
            "AGENTFUL_OTEL_ENDPOINT": f"http://127.0.0.1:{otlp.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        worker = WorkerProcess(NODE, ["meta"], env=env, log_path=log_path).start()
        try:

            def ready() -> bool:
                entry = cluster_catalog(refresh=True).get("meta")
                return entry is not None and "meta" in entry.tools

            assert wait_for(ready, 60), f"meta-echo never published its tools; see {log_path}"
            yield otlp, log_path
        finally:
            worker.stop()


def _echoed_meta(result: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(result["content"][0]["text"])
    return meta


def _task_lines(log_path: Path, task_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(log_path) if line.get("task_id") == task_id]


def test_the_callers_trace_id_reaches_the_worker_log_and_the_mcp_server(
    traced_worker: tuple[Recorder, Path],
) -> None:
    from tasks import call_tool
    from tasks.telemetry.context import trace_scope
    from workers.launcher import wait_for

    _, log_path = traced_worker
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with trace_scope(trace_id):
        async_result = call_tool.delay("meta", "meta", {})
    result = async_result.get(timeout=30)
    meta = _echoed_meta(result)
    assert meta["agentful/trace_id"] == trace_id
    assert meta["agentful/task_id"] == async_result.id

    assert wait_for(lambda: _task_lines(log_path, async_result.id), 10), "no JSON log line for the task"
    lines = _task_lines(log_path, async_result.id)
    assert {line["trace_id"] for line in lines} == {trace_id}
    line = lines[0]
    assert line["service"] == "agentful-worker"
    assert line["server"] == "meta" and line["tool"] == "meta"
    assert line["worker"] == NODE.replace("%h", socket.gethostname())
    assert line["level"] in ("INFO", "WARNING", "DEBUG", "ERROR")
    assert line["timestamp"] and line["message"]


def test_a_caller_without_a_trace_id_gets_one_per_call(traced_worker: tuple[Recorder, Path]) -> None:
    from tasks import call_tool
    from tasks.telemetry.context import valid_trace_id

    first = _echoed_meta(call_tool.delay("meta", "meta", {}).get(timeout=30))["agentful/trace_id"]
    second = _echoed_meta(call_tool.delay("meta", "meta", {}).get(timeout=30))["agentful/trace_id"]
    assert valid_trace_id(first) == first and valid_trace_id(second) == second
    assert first != second


def _spans(otlp: Recorder) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list[Any] = []
    for body in otlp.bodies("/v1/traces"):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), ""
            )
            for scope in resource.scope_spans:
                spans.extend((service, span) for span in scope.spans)
    return spans


def test_one_trace_from_delay_through_the_worker_to_the_mcp_call(
    traced_worker: tuple[Recorder, Path],
) -> None:
    from tasks import call_tool
    from tasks.telemetry import tracing
    from workers.launcher import wait_for

    otlp, log_path = traced_worker
    assert tracing.setup("agentful-test-client", f"http://127.0.0.1:{otlp.port}")
    try:
        async_result = call_tool.delay("meta", "meta", {})
        meta = _echoed_meta(async_result.get(timeout=30))
    finally:
        tracing.shutdown()  # sends this process's spans; later tests publish untraced

    def this_call() -> dict[str, tuple[str, Any]]:
        """The spans of this call's trace, by name (the publish span carries the task id)."""
        spans = _spans(otlp)
        traces = {
            span.trace_id
            for _, span in spans
            if any(
                a.key == "messaging.message.id" and a.value.string_value == async_result.id
                for a in span.attributes
            )
        }
        return {span.name: (service, span) for service, span in spans if span.trace_id in traces}

    wanted = {"apply_async/agentful.call_tool", "run/agentful.call_tool", "mcp.call_tool"}
    assert wait_for(lambda: wanted <= set(this_call()), 20), f"spans received: {sorted(this_call())}"
    got = this_call()
    client, publish = got["apply_async/agentful.call_tool"]
    worker_a, run = got["run/agentful.call_tool"]
    worker_b, mcp = got["mcp.call_tool"]
    assert client == "agentful-test-client" and worker_a == worker_b == "agentful-worker"
    assert publish.trace_id == run.trace_id == mcp.trace_id
    assert run.parent_span_id == publish.span_id
    assert mcp.parent_span_id == run.span_id

    trace_hex = publish.trace_id.hex()
    # The trace id of logs and _meta is the trace's own, and the server got the MCP span's context.
    assert meta["agentful/trace_id"] == trace_hex
    # The MCP SDK traces its own request under ours and puts that span's context in _meta.
    sent = next(span for name, (_, span) in got.items() if name.startswith("MCP send tools/call"))
    assert sent.parent_span_id == mcp.span_id and sent.trace_id == mcp.trace_id
    assert meta["traceparent"].split("-")[1:3] == [trace_hex, sent.span_id.hex()]
    assert wait_for(lambda: _task_lines(log_path, async_result.id), 10)
    assert {line["trace_id"] for line in _task_lines(log_path, async_result.id)} == {trace_hex}
