"""agentful's Celery control commands, registered on every worker (by workers.boot, at import).

`agentful_health_check`: beat's health-check task broadcasts it, so every worker probes every
one of its MCP servers (not just the worker that happened to take the task). It returns at
once; the results reach the registry with the next heartbeat. Prefork workers' sessions live
in the pool processes, where a control command does not run: there it reports so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.worker.control import control_command

if TYPE_CHECKING:
    from workers.hub import SessionHub

HEALTH_CHECK = "agentful_health_check"


def register(in_process_hub: Callable[[], SessionHub | None]) -> None:
    """Register the commands; `in_process_hub` is the hub of this process if it serves calls here
    (workers.boot's: it passes it in, so this module does not import workers.boot back)."""

    @control_command(args=[("timeout_s", float)], signature="[timeout_s=5.0]")  # type: ignore[untyped-decorator]
    def agentful_health_check(state: Any, timeout_s: float = 5.0) -> dict[str, str]:
        hub = in_process_hub()
        if hub is None:
            return {"ok": "not probed: this worker's MCP sessions live in its pool processes"}
        hub.check_soon(float(timeout_s))
        return {"ok": f"checking {len(hub.sessions)} servers"}
