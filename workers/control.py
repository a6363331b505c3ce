"""agentful's Celery control commands, registered on every worker.

`agentful_health_check`: beat's health-check task broadcasts it, so every worker probes every
one of its MCP servers (not just the worker that happened to take the task). It returns at
once; the results reach the registry with the next heartbeat. Prefork workers' sessions live
in the pool processes, where a control command does not run: there it reports so.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

HEALTH_CHECK = "agentful_health_check"


@control_command(args=[("timeout_s", float)], signature="[timeout_s=5.0]")  # type: ignore[untyped-decorator]
def agentful_health_check(state: Any, timeout_s: float = 5.0) -> dict[str, str]:
    from workers import boot

    hub = boot.in_process_hub()
    if hub is None:
        return {"ok": "not probed: this worker's MCP sessions live in its pool processes"}
    hub.check_soon(float(timeout_s))
    return {"ok": f"checking {len(hub.sessions)} servers"}
