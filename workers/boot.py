"""Celery signal hooks that give each worker process its MCP runtime.

Imported by workers only (`imports` in celeryconfig). Prefork children build their hub in
`worker_process_init` (after fork: never share a loop thread or a pipe across fork); thread and
solo pools build it in the main process once the worker is ready. Either way the hub is also
built lazily by the first task, and `start()` only schedules the connects, so the
process-init hook returns at once (Celery kills a child whose init takes over 4 s).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from tasks.api import catalog_store
from tasks.app import app
from tasks.contracts import set_executor_factory
from tasks.gctune import tune as tune_gc
from tasks.policy.scaling import CallWindow
from tasks.redisconn import connect
from tasks.registry import ServerHealth, lease_s, worker_queue
from tasks.routing import AGENT_SERVER, server_queue
from tasks.settings import get_config, get_settings
from workers import control, lifecycle
from workers.heartbeat import Heartbeat
from workers.hub import SessionHub
from workers.workspaces import Workspaces

log = logging.getLogger(__name__)
_hub: SessionHub | None = None
_lock = threading.Lock()
_node_name = ""
_heartbeat: Heartbeat | None = None
_in_process = False
# The calls this process finished over the last autoscaling.windowS, for the heartbeat (beat's
# autoscaler reads p95 latency and error rate from it). Filled by the task signals below, in the
# process that runs the task: the main process for thread and solo pools (prefork children keep
# their own, which no heartbeat carries: prefork workers report no latency).
_calls = CallWindow(get_config().autoscaling.window_s)
_started: dict[str, float] = {}


def get_hub() -> SessionHub:
    """This process's hub, made on first use (and again in a forked child)."""
    global _hub
    with _lock:
        if _hub is None or _hub.pid != os.getpid():
            settings, config = get_settings(), get_config()
            _hub = SessionHub(
                config,
                settings.worker_servers(config),
                log_dir=settings.log_dir,
                store=catalog_store(),
                worker=_node_name or f"{socket.gethostname()}:{os.getpid()}",
                on_breaker=_on_breaker,
                lease_s=lease_s(settings.heartbeat_s),
                workspaces=_workspaces(settings, config),
            )
            _hub.start()
            log.info("MCP runtime started in pid %d: %s", os.getpid(), ", ".join(_hub.servers()) or "none")
        return _hub


set_executor_factory(get_hub)


def _workspaces(settings: Any, config: Any) -> Workspaces | None:
    """This host's project workspaces, if it runs a per-project server (or agent runs)."""
    names = settings.worker_servers(config)
    if not (config.agents.enabled or any(config.servers[n].per_project for n in names)):
        return None
    store = catalog_store()
    client = connect(store.url, socket_connect_timeout=3, socket_timeout=10) if store else None
    node = _node_name or f"{socket.gethostname()}:{os.getpid()}"
    return Workspaces(settings.workspaces_root(config), config.projects, node=node, store=client)


def in_process_hub() -> SessionHub | None:
    """The hub of this process if it serves calls here (thread and solo pools), else None."""
    return get_hub() if _in_process else None


control.register(in_process_hub)  # agentful's control commands


def _on_breaker(server: str, status: str) -> None:
    """An open breaker stops this worker taking the server's shared queue; closed resumes it.

    Through Celery's own control commands, so the consumer changes its queues on its own thread.
    (In prefork children the node name is unknown: there the breaker only fails calls fast.)
    """
    if not _node_name:
        return
    queue, node = server_queue(server), [_node_name]

    def send() -> None:
        try:
            if status == "open":
                app.control.cancel_consumer(queue, destination=node)
            elif status == "closed":
                app.control.add_consumer(queue, destination=node)
        except Exception as exc:
            log.warning("could not switch consuming %s after the circuit went %s: %s", queue, status, exc)

    threading.Thread(target=send, name="agentful-breaker", daemon=True).start()


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    get_hub()
    tune_gc(get_settings().gc_threshold)  # a prefork child: its own hub and sessions are up


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    """Own queue, hub (unless prefork: the children have theirs), heartbeat."""
    global _node_name, _heartbeat
    if _heartbeat is not None:  # once per process, whatever Celery sends
        return
    _node_name = str(getattr(sender, "hostname", "") or "")
    queue = worker_queue(_node_name)
    sender.add_task_queue(queue)  # calls routed to this very worker (affinity)
    if get_config().agents.enabled:
        sender.add_task_queue(server_queue(AGENT_SERVER))  # agent runs (tasks/agents.py)
    controller = getattr(sender, "controller", None)
    pool = getattr(controller, "pool_cls", None)
    in_process = "prefork" not in str(getattr(pool, "__module__", pool))
    global _in_process
    _in_process = in_process
    if in_process:
        get_hub()
    tune_gc(get_settings().gc_threshold)  # booted: what it holds now lives as long as it does
    store = catalog_store()
    if store is None:
        log.info("no Redis broker or backend: this worker publishes no heartbeat")
        return
    settings, config = get_settings(), get_config()
    names = settings.worker_servers(config)

    def servers() -> dict[str, ServerHealth]:
        health = (
            get_hub().health() if in_process else {n: ServerHealth(state="in-pool-processes") for n in names}
        )
        if config.agents.enabled:
            health[AGENT_SERVER] = ServerHealth(state="ready")
        return health

    reaper = lifecycle.reaper(store.url)
    _heartbeat = Heartbeat(
        reaper.registry,
        node=_node_name,
        queue=queue,
        capacity=int(getattr(controller, "concurrency", 1) or 1),
        interval_s=settings.heartbeat_s,
        servers=servers,
        reaper=reaper,
        window=lambda: _calls.stats(time.time()),
    ).start()


@task_prerun.connect
def _on_task_start(task_id: str = "", task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == "agentful.call_tool":
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _on_task_end(task_id: str = "", state: str | None = None, **_: Any) -> None:
    """A call that succeeded counts as ok (a tool's own is_error too: it is a result); one that
    failed or is being retried counts as an error."""
    started = _started.pop(task_id, None)
    if started is not None:
        _calls.record(time.time(), time.monotonic() - started, ok=state == "SUCCESS")


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    global _hub
    with _lock:
        hub, _hub = _hub, None
    if hub is not None and hub.pid == os.getpid():
        hub.close()
