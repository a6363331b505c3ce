"""Telemetry's pure parts: trace ids, the log line, the port choice, the cluster gauges, scrubbing,
the call observation (in this process's registry), and the gateway's /metrics route."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import REGISTRY

from tasks.queues import agentful_queues, redis_depths
from tasks.telemetry import context, logs, metrics, sentry
from tasks.telemetry.calls import observe_call
from tasks.telemetry.hooks import celery_role
from tasks.telemetry.tracing import _on_publish


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0af7651916cd43dd8448eb211c80319c", "0af7651916cd43dd8448eb211c80319c"),
        ("0AF76519-16CD-43DD-8448-EB211C80319C", "0af7651916cd43dd8448eb211c80319c"),  # a UUID
        ("0" * 32, None),  # W3C: all zero is invalid
        ("abc", None),
        ("g" * 32, None),
        (None, None),
        (123, None),
    ],
)
def test_valid_trace_id(value: object, expected: str | None) -> None:
    assert context.valid_trace_id(value) == expected


def test_traceparent() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert context.from_traceparent(tp) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.from_traceparent("garbage") is None
    assert context.from_traceparent(None) is None


def test_trace_scope_sets_and_restores() -> None:
    assert context.current_trace_id() is None
    with context.trace_scope("not-an-id") as made:
        assert context.valid_trace_id(made) == made  # a bad id is replaced, not trusted
        with context.trace_scope("0af7651916cd43dd8448eb211c80319c") as inner:
            assert context.current_trace_id() == inner == "0af7651916cd43dd8448eb211c80319c"
        assert context.current_trace_id() == made
    assert context.current_trace_id() is None


def test_publish_adds_the_callers_trace_id_and_keeps_one_already_there() -> None:
    headers: dict[str, Any] = {}
    with context.trace_scope("0af7651916cd43dd8448eb211c80319c"):
        _on_publish(headers=headers)
    assert headers[context.TRACE_HEADER] == "0af7651916cd43dd8448eb211c80319c"
    kept = {context.TRACE_HEADER: "11111111111111111111111111111111"}
    _on_publish(headers=kept)
    assert kept[context.TRACE_HEADER] == "11111111111111111111111111111111"
    fresh: dict[str, Any] = {}
    _on_publish(headers=fresh)
    assert context.valid_trace_id(fresh[context.TRACE_HEADER])


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/x/site-packages/celery/__main__.py", "-A", "tasks", "worker", "-l", "INFO"], "worker"),
        (["/usr/bin/celery", "-A", "tasks", "beat"], "beat"),
        (["/usr/bin/celery", "-A", "tasks", "flower"], "flower"),
        (["/usr/bin/agentful", "worker"], None),
        (["-c"], None),
        ([], None),
    ],
)
def test_celery_role(argv: list[str], role: str | None) -> None:
    assert celery_role(argv) == role


def test_a_json_log_line_carries_the_call_context() -> None:
    stream = io.StringIO()
    handler = logs.configure("agentful-test", fmt="json", stream=stream)
    try:
        context.set_worker("w1@host")
        with context.trace_scope("0af7651916cd43dd8448eb211c80319c"):
            token = context.server_var.set("git")
            logging.getLogger("agentful.test").warning("hello %s", "there")
            context.server_var.reset(token)
        line = json.loads(stream.getvalue().strip().splitlines()[-1])
    finally:
        logging.getLogger().removeHandler(handler)
        context.set_worker("")
    assert line["message"] == "hello there" and line["level"] == "WARNING"
    assert line["service"] == "agentful-test" and line["worker"] == "w1@host"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and line["server"] == "git"
    assert line["task_id"] is None and line["tool"] is None
    assert line["timestamp"].endswith("+00:00") and "context" not in line


def test_text_log_line_shows_the_trace_id() -> None:
    stream = io.StringIO()
    handler = logs.configure("agentful-test", fmt="text", stream=stream)
    try:
        with context.trace_scope("0af7651916cd43dd8448eb211c80319c"):
            logging.getLogger("agentful.test").warning("plain")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "plain [trace_id=0af7651916cd43dd8448eb211c80319c]" in stream.getvalue()


@pytest.mark.parametrize(
    ("value", "port"), [("off", None), ("", None), ("auto", 0), ("9100", 9100), (" AUTO ", 0)]
)
def test_parse_port(value: str, port: int | None) -> None:
    assert metrics.parse_port(value) == port


@pytest.mark.parametrize("value", ["x", "0", "70000", "-1"])
def test_parse_port_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="AGENTFUL_METRICS_PORT"):
        metrics.parse_port(value)


def test_auto_port_skips_a_taken_one(tmp_path: Any) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1]
    exporter = None
    try:
        exporter = metrics.start_exporter(
            0, addr="127.0.0.1", role="worker", instance="w1@h", targets_dir=tmp_path, base=base
        )
        assert exporter.port != base
        target = json.loads((tmp_path / "worker-w1@h.json").read_text())
        assert target[0]["targets"] == [f"127.0.0.1:{exporter.port}"]
        assert "mcp_requests_total" in httpx2.get(f"http://127.0.0.1:{exporter.port}/metrics").text
    finally:
        if exporter is not None:
            exporter.stop()
        taken.close()
    assert not (tmp_path / "worker-w1@h.json").exists()


def test_a_fixed_port_that_is_taken_is_an_error_naming_it() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"port {port} taken"):
            metrics.start_exporter(port, addr="127.0.0.1", role="beat", instance="b", targets_dir=None)
    finally:
        taken.close()


@dataclass
class Health:
    state: str = "ready"
    healthy: bool = True
    breaker: str = "closed"


@dataclass
class Beat:
    in_flight: int = 0
    capacity: int = 16
    servers: dict[str, Health] = field(default_factory=dict)


def _samples(families: Any) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for f in families for s in f.samples}


def test_cluster_gauges() -> None:
    alive = {
        "a@h": Beat(3, 16, {"git": Health(), "time": Health()}),
        "b@h": Beat(0, 4, {"git": Health(breaker="open"), "time": Health(breaker="half-open")}),
        "c@h": Beat(0, 4, {"git": Health(healthy=False)}),
    }
    got = _samples(metrics.cluster_families({"mcp.git": 7, "agentful": 0}, alive, ["d@h"]))
    assert got[("mcp_task_queue_depth", ("mcp.git",))] == 7
    assert got[("mcp_task_queue_depth", ("agentful",))] == 0
    assert got[("mcp_worker_health", ("a@h",))] == 1
    assert got[("mcp_worker_health", ("b@h",))] == 0.5
    assert got[("mcp_worker_health", ("c@h",))] == 0.5
    assert got[("mcp_worker_health", ("d@h",))] == 0
    assert got[("mcp_breaker_state", ("a@h", "git"))] == 0
    assert got[("mcp_breaker_state", ("b@h", "git"))] == 2
    assert got[("mcp_breaker_state", ("b@h", "time"))] == 1
    assert got[("mcp_worker_in_flight", ("a@h",))] == 3
    assert got[("mcp_worker_capacity", ("b@h",))] == 4
    assert got[("mcp_workers", ())] == 3


def test_a_broker_that_fails_yields_no_cluster_gauges_and_no_error() -> None:
    def boom() -> dict[str, int]:
        raise ConnectionError("broker down")

    collector = metrics.ClusterCollector(boom, lambda: ({}, []))
    assert list(collector.collect()) == []


class _Pipe:
    def __init__(self, lists: dict[str, int]) -> None:
        self.lists: dict[str, int] = lists
        self.asked: list[str] = []

    def llen(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[int]:
        return [self.lists.get(k, 0) for k in self.asked]


class _Client:
    def __init__(self, lists: dict[str, int]) -> None:
        self.pipe = _Pipe(lists)

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return self.pipe


def test_redis_depths_count_every_priority_band() -> None:
    client = _Client({"mcp.git": 2, "mcp.git\x06\x163": 1, "mcp.git\x06\x169": 4, "agentful": 1})
    assert redis_depths(client, ["agentful", "mcp.git", "mcp.time"]) == {
        "agentful": 1,
        "mcp.git": 7,
        "mcp.time": 0,
    }


def test_agentful_queues() -> None:
    assert agentful_queues({"time", "git"}, {"w1@h"}) == ["agentful", "mcp.git", "mcp.time", "worker.w1@h"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://admin:hunter2@10.0.0.9:6379/0", "redis://[Filtered]@10.0.0.9:6379/0"),
        ("amqp://guest:guest@mq//", "amqp://[Filtered]@mq//"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer [Filtered]"),
        ("https://example.com/path", "https://example.com/path"),
        ("user@example.com wrote", "user@example.com wrote"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert sentry.scrub_text(text) == expected


def test_scrub_event_reaches_nested_strings() -> None:
    event = {
        "exception": {"values": [{"value": "cannot reach redis://u:pw@h/0"}]},
        "extra": {"x": ["Bearer abc"]},
    }
    out = sentry.scrub_event(event)
    assert "pw" not in json.dumps(out) and "abc" not in json.dumps(out)


def test_sentry_is_off_without_a_dsn() -> None:
    assert sentry.setup(None, service="x") is False


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_call_counts_outcomes_and_errors_by_class() -> None:
    labels = {"server": "unit", "tool": "t"}
    ok0, err0 = (
        _value("mcp_requests_total", **labels, status="ok"),
        _value("mcp_requests_total", **labels, status="error"),
    )
    tool0 = _value("mcp_requests_total", **labels, status="tool_error")
    kind0 = _value("mcp_errors_total", **labels, kind="TimeoutError")
    n0 = _value("mcp_request_duration_seconds_count", **labels)
    with context.trace_scope("0af7651916cd43dd8448eb211c80319c"), observe_call("unit", "t", {"a": 1}) as call:
        assert call.meta == {"a": 1, context.META_KEY: "0af7651916cd43dd8448eb211c80319c"}
        call.done({"content": []})
    with observe_call("unit", "t", None) as call:
        call.done({"isError": True})
    with pytest.raises(TimeoutError), observe_call("unit", "t", None):
        raise TimeoutError("slow")
    assert _value("mcp_requests_total", **labels, status="ok") == ok0 + 1
    assert _value("mcp_requests_total", **labels, status="tool_error") == tool0 + 1
    assert _value("mcp_requests_total", **labels, status="error") == err0 + 1
    assert _value("mcp_errors_total", **labels, kind="TimeoutError") == kind0 + 1
    assert _value("mcp_request_duration_seconds_count", **labels) == n0 + 3


def test_every_documented_name_is_exposed_by_its_definitions() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    families = list(REGISTRY.collect())
    defined = {m.name for m in families} | {f"{m.name}_total" for m in families}
    cluster = {m.name for m in metrics.cluster_families({"q": 1}, {}, [])}
    for name in metrics.METRIC_NAMES:
        assert f"`{name}`" in doc, f"{name} missing from docs/metrics.md"
        assert name in defined | cluster, f"{name} is documented but not defined"


def test_the_gateway_serves_metrics() -> None:
    from gateway.app import build_app
    from tasks.config_file import ConfigFile

    app = build_app(ConfigFile())

    async def get() -> httpx2.Response:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://gw"
        ) as client:
            return await client.get("/metrics")

    response = asyncio.run(get())
    assert response.status_code == 200
    assert "# TYPE mcp_requests_total counter" in response.text


def test_trace_id_from_an_mcp_requests_meta() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert context.trace_id_from_meta({"traceparent": tp}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.trace_id_from_meta({context.META_KEY: "0af7651916cd43dd8448eb211c80319c"}) == (
        "0af7651916cd43dd8448eb211c80319c"
    )
    assert context.trace_id_from_meta({"traceparent": "junk"}) is None
    assert context.trace_id_from_meta(None) is None
