"""Queue names and the Celery router: plain `.delay()` calls land on the right queue.

A call for server S goes to the shared queue `mcp.S`, consumed by each worker that runs S (an
idle worker takes the next call), or, with a project affinity or a load-balancing algorithm
other than "shared-queue", to one worker's own queue `worker.<node>` (tasks/router.py).
Control tasks (`list_tools` of the whole cluster) go to `agentful`, which every worker consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONTROL_QUEUE = "agentful"
SERVER_QUEUE_PREFIX = "mcp."
# Agent runs (tasks/agents.py) are routed like the calls of a server of this name: their shared
# queue is `mcp.agent`, and workers with agents on report it in their heartbeats. Reserved.
AGENT_SERVER = "agent"


# Requests to one server's session (resources, prompts): its shared queue, like list_tools.
SERVER_REQUEST_TASKS = frozenset(
    {
        "agentful.list_resources",
        "agentful.read_resource",
        "agentful.list_prompts",
        "agentful.get_prompt",
        "agentful.complete",
    }
)


def server_queue(server: str) -> str:
    return f"{SERVER_QUEUE_PREFIX}{server}"


def worker_queues(servers: list[str]) -> list[str]:
    """The queues a worker running these servers consumes."""
    return [CONTROL_QUEUE, *(server_queue(s) for s in servers)]


def _server_of(args: Any, kwargs: Any) -> str | None:
    if kwargs and isinstance(kwargs.get("server"), str):
        return str(kwargs["server"])
    if args and isinstance(args[0], str):
        return str(args[0])
    return None


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, Any]:
    """Celery `task_routes` function: calls by affinity and load, the rest to the control queue."""
    if name == "agentful.run_agent":
        project = kwargs.get("project_id") if kwargs else None
        if _cluster_router is not None and isinstance(project, str):
            return {"queue": _cluster_router(AGENT_SERVER, project)}
        return {"queue": server_queue(AGENT_SERVER)}
    if name in ("agentful.call_tool", "agentful.list_tools") or name in SERVER_REQUEST_TASKS:
        server = _server_of(args, kwargs)
        if server:
            if name == "agentful.call_tool" and _cluster_router is not None:
                project = kwargs.get("project_id") if kwargs else None
                return {"queue": _cluster_router(server, project if isinstance(project, str) else None)}
            return {"queue": server_queue(server)}
    return {"queue": CONTROL_QUEUE}


_cluster_router: Callable[[str, str | None], str] | None = None


def use_cluster_router(router: Callable[[str, str | None], str] | None) -> None:
    """Install the registry-aware router (the task layer does, when the broker is Redis)."""
    global _cluster_router
    _cluster_router = router
