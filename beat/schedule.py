"""The control loop's schedule, run by `celery beat` (`agentful beat`, or `agentful up`).

Health checks every `mcp.client.loadBalancing.healthCheck.interval` ms: the task broadcasts a
control command, and every worker probes each of its MCP servers (ping on sessions that speak
the handshake era, a tools listing otherwise, within `healthCheck.timeout`). A server is marked
unhealthy after `unhealthyThreshold` failed checks in a row, healthy after `healthyThreshold`
good ones; the registry carries the verdict and the router avoids unhealthy servers.

Periodic tool calls from the config file's `schedules`: one entry each, named as in the file,
that submits `call_tool(server, tool, arguments)` every `every` seconds or on its `crontab`
line, as any caller would (checked against the catalog, routed to the server's queue).

Beat's own jobs, run inside beat's process by its scheduler (beat/scheduler.py), never sent to
a worker, so no worker needs their code:
- autoscaling, when `autoscaling.enabled`: the `autoscale` entry every `autoscaling.intervalS`
  (beat/autoscale.py, docs/autoscaling.md);
- signing key rotation for the gateway's built-in issuer (gateway/auth/rotation.py): the
  `rotate-signing-keys` entry, checked at beat's start and then daily, makes a new key once the
  current one is `gateway.auth.rotationDays` old. Nothing here imports the gateway: celeryconfig
  loads this module in every process.
"""

from __future__ import annotations

from typing import Any

from tasks.config_file import ConfigFile

AUTOSCALE_TASK = "agentful.autoscale"
ROTATE_KEYS_TASK = "agentful.rotate_signing_keys"
ROTATION_CHECK_S = 86_400.0
# Tasks with these names are jobs beat runs itself (beat/scheduler.py); no worker registers them.
IN_BEAT_TASKS = frozenset({AUTOSCALE_TASK, ROTATE_KEYS_TASK})


def beat_schedule(config: ConfigFile) -> dict[str, dict[str, Any]]:
    interval_s = config.mcp.client.load_balancing.health_check.interval / 1000
    entries: dict[str, dict[str, Any]] = {
        "health-check": {
            "task": "agentful.health_check",
            "schedule": interval_s,
            "args": [config.mcp.client.load_balancing.health_check.timeout / 1000],
            "options": {"expires": interval_s},  # a missed check is replaced by the next one
        }
    }
    for name, spec in config.schedules.items():
        entry: dict[str, Any] = {
            "task": "agentful.call_tool",
            "schedule": spec.celery_schedule(),
            "args": [spec.server, spec.tool, dict(spec.arguments)],
        }
        if spec.priority is not None:
            entry["options"] = {"priority": spec.priority}
        entries[name] = entry
    if config.autoscaling.enabled:
        entries["autoscale"] = {"task": AUTOSCALE_TASK, "schedule": config.autoscaling.interval_s}
    if config.gateway.auth.enabled and config.gateway.auth.external is None:
        # A daily check; it rotates when the signing key is rotationDays old.
        entries["rotate-signing-keys"] = {"task": ROTATE_KEYS_TASK, "schedule": ROTATION_CHECK_S}
    return entries
