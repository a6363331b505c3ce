"""route_task sends a server's calls to its shared queue and everything else to the control queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tasks.routing
from tasks.routing import CONTROL_QUEUE, route_task, server_queue, use_cluster_router, worker_queues


@pytest.fixture(autouse=True)
def no_cluster_router() -> Iterator[None]:
    """These tests are of the static routes; the registry-aware router is tested on its own."""
    saved = tasks.routing._cluster_router
    use_cluster_router(None)
    yield
    use_cluster_router(saved)


def test_an_installed_cluster_router_decides_call_tool_queues() -> None:
    seen: list[tuple[str, str | None]] = []

    def router(server: str, project: str | None) -> str:
        seen.append((server, project))
        return f"worker.w-{project}"

    use_cluster_router(router)
    assert route_task("agentful.call_tool", ("git", "t", {}), {"project_id": "p1"}, {}) == {
        "queue": "worker.w-p1"
    }
    assert route_task("agentful.call_tool", ("git", "t", {}), {}, {}) == {"queue": "worker.w-None"}
    assert route_task("agentful.list_tools", ("git",), {}, {}) == {"queue": "mcp.git"}
    assert seen == [("git", "p1"), ("git", None)]


def test_queue_names() -> None:
    assert CONTROL_QUEUE == "agentful"
    assert server_queue("time") == "mcp.time"
    assert server_queue("my-server_2") == "mcp.my-server_2"


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "queue"),
    [
        # call_tool: positional server (how CallToolTask publishes it)
        ("agentful.call_tool", ("time", "get_current_time", {}), {}, "mcp.time"),
        ("agentful.call_tool", ["git", "git_status", {"repo_path": "/r"}], None, "mcp.git"),
        ("agentful.call_tool", ("git",), {"project_id": "p1"}, "mcp.git"),
        # call_tool: keyword server; the keyword wins over a positional first argument
        ("agentful.call_tool", (), {"server": "time", "tool": "t"}, "mcp.time"),
        ("agentful.call_tool", None, {"server": "git"}, "mcp.git"),
        ("agentful.call_tool", ("time",), {"server": "git"}, "mcp.git"),
        # a non-string keyword server falls back to the positional one
        ("agentful.call_tool", ("time",), {"server": 3}, "mcp.time"),
        # list_tools: one server's live list comes from that server's queue
        ("agentful.list_tools", ("git",), {}, "mcp.git"),
        ("agentful.list_tools", (), {"server": "time"}, "mcp.time"),
        # no usable server: the control queue
        ("agentful.list_tools", (), {}, CONTROL_QUEUE),
        ("agentful.list_tools", None, None, CONTROL_QUEUE),
        ("agentful.list_tools", (None,), {"server": None}, CONTROL_QUEUE),
        ("agentful.call_tool", ("",), {}, CONTROL_QUEUE),
        ("agentful.call_tool", (42, "t"), {}, CONTROL_QUEUE),
        # every other task
        ("agentful.ping", (), {}, CONTROL_QUEUE),
        ("agentful.health_check", ("time",), {"server": "time"}, CONTROL_QUEUE),
        ("celery.chord_unlock", ("time",), {}, CONTROL_QUEUE),
        ("other.call_tool", ("time",), {}, CONTROL_QUEUE),
    ],
)
def test_route_task(name: str, args: Any, kwargs: Any, queue: str) -> None:
    assert route_task(name, args, kwargs, {}) == {"queue": queue}


def test_route_task_accepts_celery_extra_arguments() -> None:
    route = route_task("agentful.call_tool", ("time",), {}, {"priority": 1}, task=object(), extra=True)

    assert route == {"queue": "mcp.time"}


@pytest.mark.parametrize(
    ("servers", "queues"),
    [
        ([], ["agentful"]),
        (["time"], ["agentful", "mcp.time"]),
        (["git", "time", "web"], ["agentful", "mcp.git", "mcp.time", "mcp.web"]),
    ],
)
def test_worker_queues(servers: list[str], queues: list[str]) -> None:
    assert worker_queues(servers) == queues


def test_celery_app_uses_the_router() -> None:
    """The app's configured router resolves the same queues (no broker is contacted)."""
    from tasks.app import app

    router = app.amqp.router
    call = router.route({}, "agentful.call_tool", ("time", "t", {}), {})
    ping = router.route({}, "agentful.ping", (), {})

    assert call["queue"].name == "mcp.time"
    assert ping["queue"].name == CONTROL_QUEUE
