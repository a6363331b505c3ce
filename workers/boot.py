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
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from tasks.api import catalog_store
from tasks.contracts import set_executor_factory
from tasks.settings import get_config, get_settings
from workers.hub import SessionHub

log = logging.getLogger(__name__)
_hub: SessionHub | None = None
_lock = threading.Lock()
_node_name = ""


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
            )
            _hub.start()
            log.info("MCP runtime started in pid %d: %s", os.getpid(), ", ".join(_hub.servers()) or "none")
        return _hub


set_executor_factory(get_hub)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    get_hub()


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    global _node_name
    _node_name = str(getattr(sender, "hostname", "") or "")
    pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
    if "prefork" not in str(getattr(pool, "__module__", pool)):
        get_hub()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    global _hub
    with _lock:
        hub, _hub = _hub, None
    if hub is not None and hub.pid == os.getpid():
        hub.close()
