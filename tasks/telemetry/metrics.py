"""Prometheus metrics of every agentful role, defined once, here.

Names follow the seed. Who records what:

- workers record every MCP call where it runs (`observe_call` in tasks.telemetry.calls, used by
  the worker's SessionHub): `mcp_requests_total`, `mcp_errors_total`,
  `mcp_request_duration_seconds`, and `mcp_active_connections` from each session's state;
- beat measures the cluster-wide gauges at scrape time (`ClusterCollector`): queue depths from
  the broker, worker health, breaker states, in-flight calls and capacity from the registry;
- the autoscaler (beat) records its decisions: `SCALING_DECISIONS`, `DESIRED_WORKERS`, ...

Exposition: `start_exporter()` (workers and beat, AGENTFUL_METRICS_PORT) and `asgi_app()` (the
gateway's /metrics). A worker whose exporter is on runs in prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, one directory per worker, emptied at start), so prefork children
are counted; the exporter in the main process merges their files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_asgi_app,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# --- call metrics (workers) -----------------------------------------------------------------

REQUESTS = Counter(
    "mcp_requests",
    "MCP tool calls run by workers, by outcome: ok, tool_error (the tool's own is_error), error",
    ["server", "tool", "status"],
)
ERRORS = Counter(
    "mcp_errors",
    "MCP tool calls that failed, by error class (ToolTimeoutError, ServerCrashedError, ...)",
    ["server", "tool", "kind"],
)
REQUEST_DURATION = Histogram(
    "mcp_request_duration_seconds",
    "Time of an MCP tool call on the worker, from hand-off to the session to its result",
    ["server", "tool"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ACTIVE_CONNECTIONS = Gauge(
    "mcp_active_connections",
    "Live MCP client sessions (connected and ready) per server, summed over a worker's processes",
    ["server"],
    multiprocess_mode="livesum",
)

# --- cluster gauges (beat, measured at scrape time by ClusterCollector) ----------------------
# Declared as names here; their values come from ClusterCollector.collect(), not from objects.
QUEUE_DEPTH_NAME = "mcp_task_queue_depth"
WORKER_HEALTH_NAME = "mcp_worker_health"
BREAKER_STATE_NAME = "mcp_breaker_state"
WORKERS_NAME = "mcp_workers"
WORKER_IN_FLIGHT_NAME = "mcp_worker_in_flight"
WORKER_CAPACITY_NAME = "mcp_worker_capacity"
BREAKER_VALUES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}

# --- scaling (beat's autoscaler records these) ------------------------------------------------

SCALING_DECISIONS = Counter(
    "mcp_scaling_decisions",
    "Autoscaler decisions that changed the desired number of workers, by direction (up, down)",
    ["direction"],
)
SCALING_EVALUATIONS = Counter(
    "mcp_scaling_evaluations",
    "Autoscaler evaluations, by outcome (up, down, hold, cooldown)",
    ["outcome"],
)
DESIRED_WORKERS = Gauge("mcp_desired_workers", "Workers the autoscaler wants", multiprocess_mode="livemax")
IDLE_STOPS = Counter("mcp_idle_stops", "Workers stopped after their idle time", ["worker"])


# --- multiprocess mode -------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def enable_multiprocess(path: Path) -> Path:
    """Count in files under `path` (emptied now): every process forked from here writes its own.

    Called in a worker's main process before the pool forks. Every call metric has labels, so
    its values are made at `.labels()` time, after this switch (prometheus_client picks the
    value class when a value is made).
    """
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def mark_process_dead(pid: int | None = None) -> None:
    """A pool child is exiting: drop its live gauges (counters and histograms stay counted)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), path)  # type: ignore[no-untyped-call]


def exposition_registry(*extra: Collector) -> CollectorRegistry:
    """The registry to expose: merged process files in multiprocess mode, else this process's."""
    path = multiprocess_dir()
    if path is None:
        for collector in extra:
            REGISTRY.register(collector)
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    for collector in extra:
        registry.register(collector)
    return registry


# --- exporters ---------------------------------------------------------------------------------

AUTO_PORT_BASE = 9808
AUTO_PORT_SPAN = 100


def parse_port(value: str) -> int | None:
    """AGENTFUL_METRICS_PORT: 'off' (None), 'auto' (0: pick), or a port number."""
    text = value.strip().lower()
    if text in ("", "off", "false", "no", "none"):
        return None
    if text == "auto":
        return 0
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"AGENTFUL_METRICS_PORT must be off, auto or a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"AGENTFUL_METRICS_PORT must be off, auto or 1-65535, got {value!r}")
    return port


def candidate_ports(port: int, base: int = AUTO_PORT_BASE) -> list[int]:
    """The ports to try: the one given, or for 'auto' the first free of base..base+99."""
    return [port] if port else list(range(base, base + AUTO_PORT_SPAN))


class Exporter:
    """A running /metrics HTTP server, and the Prometheus file_sd target file that names it."""

    def __init__(self, server: Any, thread: Any, port: int, target_file: Path | None) -> None:
        self.server, self.thread, self.port, self.target_file = server, thread, port, target_file

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)


def start_exporter(
    port: int,
    *,
    addr: str,
    role: str,
    instance: str,
    targets_dir: Path | None,
    registry: CollectorRegistry | None = None,
    base: int = AUTO_PORT_BASE,
) -> Exporter:
    """Serve /metrics on `port`, or with port 0 on the first free port from `base` upwards.

    Several workers on one host: 'auto' binds the first free port (the bind itself decides, so
    two workers starting together never get the same one) and writes a Prometheus file_sd
    target file `<targets_dir>/<role>-<instance>.json`, removed at stop.
    """
    registry = registry or exposition_registry()
    last: OSError | None = None
    for candidate in candidate_ports(port, base):
        try:
            server, thread = start_http_server(candidate, addr=addr, registry=registry)
        except OSError as exc:
            last = exc
            continue
        bound = int(server.server_address[1])
        target = _write_target(targets_dir, role, instance, addr, bound)
        log.info("metrics for Prometheus at http://%s:%d/metrics (%s %s)", addr, bound, role, instance)
        return Exporter(server, thread, bound, target)
    tried = f"port {port}" if port else f"ports {base}-{base + AUTO_PORT_SPAN - 1}"
    raise OSError(f"cannot serve metrics on {addr}: {tried} taken ({last})")


def _write_target(targets_dir: Path | None, role: str, instance: str, addr: str, port: int) -> Path | None:
    if targets_dir is None:
        return None
    targets_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname() if addr in ("0.0.0.0", "::", "") else addr
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in instance)
    path = targets_dir / f"{role}-{safe}.json"
    entry = [{"targets": [f"{host}:{port}"], "labels": {"role": role, "instance_name": instance}}]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry), encoding="utf-8")
    tmp.replace(path)
    return path


class MetricsASGI:
    """prometheus_client's ASGI app as an object: Starlette's `Route("/metrics", MetricsASGI())`
    treats an object (not a function) as a raw ASGI app, so /metrics answers without a redirect."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def asgi_app(*extra: Collector) -> MetricsASGI:
    """An ASGI app serving this process's metrics (multiprocess-aware): `Route("/metrics", asgi_app())`."""
    return MetricsASGI(make_asgi_app(registry=exposition_registry(*extra)))


# --- beat's cluster-wide gauges -----------------------------------------------------------------


class ClusterCollector(Collector):
    """Queue depths and the worker registry, read from the broker when Prometheus scrapes.

    Measured at scrape time (prometheus_client's custom-collector pattern), so the gauges are
    never stale and nothing polls between scrapes. `depths` returns {queue: messages};
    `workers` returns (alive beats by node, dead nodes).
    """

    def __init__(
        self,
        depths: Callable[[], dict[str, int]],
        workers: Callable[[], tuple[dict[str, Any], list[str]]],
    ) -> None:
        self.depths = depths
        self.workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depths = self.depths()
            alive, dead = self.workers()
        except Exception as exc:  # a scrape must answer; the log says why the gauges are missing
            log.warning("cluster metrics unavailable: %s", exc)
            return
        yield from cluster_families(depths, alive, dead)


def cluster_families(
    depths: dict[str, int], alive: dict[str, Any], dead: Iterable[str]
) -> Iterator[GaugeMetricFamily]:
    """The cluster gauges from plain data (WorkerBeat-like objects): pure, unit-tested."""
    queue = GaugeMetricFamily(QUEUE_DEPTH_NAME, "Calls waiting in each agentful queue", labels=["queue"])
    for name, n in sorted(depths.items()):
        queue.add_metric([name], float(n))
    yield queue
    health = GaugeMetricFamily(
        WORKER_HEALTH_NAME,
        "1: heartbeat alive, every server ready, healthy, breaker closed; 0.5: alive, some not; "
        "0: heartbeat expired",
        labels=["worker"],
    )
    breaker = GaugeMetricFamily(
        BREAKER_STATE_NAME,
        "Circuit breaker per worker and server: 0 closed, 1 half-open, 2 open",
        labels=["worker", "server"],
    )
    in_flight = GaugeMetricFamily(WORKER_IN_FLIGHT_NAME, "Calls a worker is running", labels=["worker"])
    capacity = GaugeMetricFamily(WORKER_CAPACITY_NAME, "A worker's pool slots", labels=["worker"])
    for node, beat in sorted(alive.items()):
        servers = dict(beat.servers)
        fine = all(
            s.healthy and s.breaker == "closed" and s.state in ("ready", "in-pool-processes")
            for s in servers.values()
        )
        health.add_metric([node], 1.0 if fine else 0.5)
        for name, s in sorted(servers.items()):
            breaker.add_metric([node, name], BREAKER_VALUES.get(s.breaker, 2.0))
        in_flight.add_metric([node], float(beat.in_flight))
        capacity.add_metric([node], float(beat.capacity))
    for node in sorted(dead):
        health.add_metric([node], 0.0)
    workers = GaugeMetricFamily(WORKERS_NAME, "Workers with a live heartbeat", value=float(len(alive)))
    yield from (health, breaker, in_flight, capacity, workers)


METRIC_NAMES = (
    "mcp_requests_total",
    "mcp_errors_total",
    "mcp_request_duration_seconds",
    "mcp_active_connections",
    QUEUE_DEPTH_NAME,
    WORKER_HEALTH_NAME,
    BREAKER_STATE_NAME,
    WORKERS_NAME,
    WORKER_IN_FLIGHT_NAME,
    WORKER_CAPACITY_NAME,
    "mcp_scaling_decisions_total",
    "mcp_scaling_evaluations_total",
    "mcp_desired_workers",
    "mcp_idle_stops_total",
)
