"""Telemetry wired into Celery through its own signals; imported by tasks.api, so every process
that imports `tasks` has it (the producer's hooks act; the worker's and beat's fire only there).

- before_task_publish (the hook is tracing's, connected here): the task's headers get the
  caller's trace id (`agentful_trace_id`), or a new one (the OpenTelemetry trace's when tracing is on).
- task_prerun / task_postrun: the worker puts trace id, task id, server and tool in the context
  of the task's logs, and takes them out after.
- setup_logging (only with AGENTFUL_LOG_FORMAT=json): worker and beat log JSON lines; Celery
  installs no handlers of its own (that is what the signal is for).
- celeryd_init, worker_ready, worker_process_shutdown, worker_shutdown: a worker's service name,
  node, tracing, Sentry, its metrics exporter (multiprocess mode) and its end.
- beat_init: beat's tracing, Sentry and exporter with the cluster-wide gauges.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from celery.signals import (
    beat_init,
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from tasks.settings import Settings, get_settings
from tasks.telemetry import context, logs, sentry, tracing

log = logging.getLogger(__name__)
CALL_TASK = "agentful.call_tool"
_exporters: list[Any] = []


def celery_role(argv: list[str] | None = None) -> str | None:
    """'worker', 'beat' or 'flower' when this process is that Celery command, else None."""
    args = sys.argv if argv is None else argv
    program = Path(args[0]) if args else Path()
    if "celery" not in (program.name, program.parent.name):  # `celery ...` or `python -m celery ...`
        return None
    for word in args[1:]:
        if word in ("worker", "beat", "flower"):
            return word
    return None


def _settings() -> Settings | None:
    try:
        return get_settings()
    except Exception:  # a bad setting is reported by whoever reads them first, with its exit code
        return None


# --- trace id: caller -> headers -> worker ------------------------------------------------------


tracing.connect_publish_hook()  # tracing's own: its setup connects it again, after the instrumentor's


@task_prerun.connect
def _on_task_start(
    task: Any = None, task_id: str | None = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    request = getattr(task, "request", None)
    trace_id = context.valid_trace_id(getattr(request, context.TRACE_HEADER, None))
    context.trace_id_var.set(trace_id or tracing.current_trace_id() or context.new_trace_id())
    context.task_id_var.set(task_id)
    if getattr(task, "name", None) == CALL_TASK:
        a, kw = list(args or ()), dict(kwargs or {})
        server, tool = [*a, None, None][:2]
        context.server_var.set(str(kw.get("server", server) or "") or None)
        context.tool_var.set(str(kw.get("tool", tool) or "") or None)


@task_postrun.connect
def _on_task_end(**_: Any) -> None:
    for var in (context.trace_id_var, context.task_id_var, context.server_var, context.tool_var):
        var.set(None)


# --- logging --------------------------------------------------------------------------------


def _on_setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    role = celery_role() or "celery"
    if context.service() == "agentful":
        context.set_service(f"agentful-{role}")
    logs.configure(context.service(), fmt="json", level=loglevel or logging.INFO, logfile=logfile or None)


# Settings are read (and cached) only in a worker or beat: a script that imports `tasks` and then
# sets AGENTFUL_* in its environment (the benchmarks do) must not find them frozen at import.
_boot = _settings() if celery_role() in ("worker", "beat") else None
if _boot is not None and _boot.log_format == "json":
    setup_logging.connect(_on_setup_logging, weak=False, dispatch_uid="agentful-logging")


def _start_role(service: str, settings: Settings) -> None:
    context.set_service(service)
    tracing.setup(service, settings.otel_endpoint)
    sentry.setup(settings.sentry_dsn, service=service, environment=settings.sentry_environment)


# --- worker ---------------------------------------------------------------------------------


@celeryd_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    settings = _settings()
    node = str(sender or "")
    context.set_worker(node)
    if settings is None:
        return
    _start_role("agentful-worker", settings)
    from tasks.telemetry import metrics

    if metrics.parse_port(settings.metrics_port) is not None:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in node) or str(os.getpid())
        path = metrics.multiprocess_dir() or str(settings.data_dir / "metrics" / "proc" / safe)
        metrics.enable_multiprocess(Path(path))


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = _settings()
    if settings is not None:
        _start_exporter(settings, "worker", str(getattr(sender, "hostname", "") or context.worker()))


@worker_process_shutdown.connect
def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    from tasks.telemetry import metrics

    metrics.mark_process_dead(pid)


@worker_shutdown.connect
def _on_worker_exit(**_: Any) -> None:
    stop_exporters()
    tracing.flush()
    sentry.flush()


def stop_exporters() -> None:
    while _exporters:
        _exporters.pop().stop()


def _start_exporter(settings: Settings, role: str, instance: str, *extra: Any) -> None:
    from tasks.telemetry import metrics

    port = metrics.parse_port(settings.metrics_port)
    if port is None:
        return
    try:
        registry = metrics.exposition_registry(*extra)
        _exporters.append(
            metrics.start_exporter(
                port,
                addr=settings.metrics_addr,
                role=role,
                instance=instance,
                targets_dir=settings.data_dir / "metrics" / "targets",
                registry=registry,
            )
        )
    except OSError as exc:
        log.error("%s runs without a metrics exporter: %s", role, exc)


# --- beat -----------------------------------------------------------------------------------


@beat_init.connect
def _on_beat_init(sender: Any = None, **_: Any) -> None:
    settings = _settings()
    if settings is None:
        return
    _start_role("agentful-beat", settings)
    from tasks.app import app
    from tasks.settings import get_config
    from tasks.store import catalog_store
    from tasks.telemetry.cluster import ClusterReader
    from tasks.telemetry.metrics import ClusterCollector

    store = catalog_store()
    reader = ClusterReader(str(app.conf.broker_url), store.url if store else None, set(get_config().servers))
    collector = ClusterCollector(reader.depths, reader.workers)
    _start_exporter(settings, "beat", f"beat@{os.uname().nodename}", collector)


def start_client(service: str = "agentful-client") -> None:
    """For a process that is no Celery role (the gateway, a script): tracing and Sentry if set."""
    settings = _settings()
    if settings is not None:
        _start_role(service, settings)


def start_gateway_telemetry() -> None:
    """The gateway's: its service name, JSON logs if configured, tracing and Sentry if configured."""
    settings = _settings()
    if settings is None:
        return
    if settings.log_format == "json":
        logs.configure("agentful-gateway", fmt="json", level=logging.INFO)
    _start_role("agentful-gateway", settings)
