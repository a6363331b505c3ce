"""Queue names and the Celery router: plain `.delay()` calls land on the right queue.

Every call for server S goes to the shared queue `mcp.S`, consumed by each worker that runs S;
an idle worker takes the next call. Control tasks (`list_tools` of the whole cluster) go to
`agentful`, which every worker consumes.
"""

from __future__ import annotations

from typing import Any

CONTROL_QUEUE = "agentful"
SERVER_QUEUE_PREFIX = "mcp."


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
    """Celery `task_routes` function."""
    if name in ("agentful.call_tool", "agentful.list_tools"):
        server = _server_of(args, kwargs)
        if server:
            return {"queue": server_queue(server)}
    return {"queue": CONTROL_QUEUE}
