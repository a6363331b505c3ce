"""Project affinity through plain `.delay()`: one project's calls stay on one worker."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


def test_a_projects_calls_stay_on_one_worker(cluster: Any) -> None:
    from tasks import call_tool
    from tasks.router import AFFINITY_PREFIX

    project = f"p-{uuid.uuid4().hex[:8]}"
    values = [
        call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, project_id=project).get(timeout=30)
        for _ in range(12)
    ]
    workers = {v["worker"] for v in values}
    assert len(workers) == 1, f"a project's calls were spread over {[v['worker'] for v in values]}"
    stored = redis.Redis.from_url(os.environ["AGENTFUL_BROKER_URL"]).get(AFFINITY_PREFIX + project)
    assert stored == workers.pop().encode()


def test_affinity_moves_when_its_worker_stops(cluster: Any, tmp_path: Path) -> None:
    from tasks import call_tool
    from tasks.registry import Registry
    from tasks.router import AFFINITY_PREFIX
    from workers.launcher import WorkerProcess, wait_for

    url = os.environ["AGENTFUL_BROKER_URL"]
    node = f"sticky@{HOST}"
    project = f"p-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    sticky = WorkerProcess("sticky@%h", ["time"], log_path=tmp_path / "sticky.log").start()
    try:
        assert wait_for(lambda: Registry(url).alive().get(node, None) is not None, 60)
        assert wait_for(lambda: Registry(url).alive()[node].servers["time"].state == "ready", 30)
        client.set(AFFINITY_PREFIX + project, node)  # as if it had served the project before
        first = call_tool.delay("time", "get_current_time", {"timezone": "UTC"}, project_id=project)
        assert first.get(timeout=30)["worker"] == node
        assert sticky.stop() == 0
    finally:
        sticky.stop()
    assert node not in Registry(url).alive()
    # A producer's registry copy may be up to 1 s old: a call routed to the stopped worker in
    # that window is moved to the shared queue by a live worker, not stranded.
    utc = {"timezone": "UTC"}
    moved = call_tool.delay("time", "get_current_time", utc, project_id=project).get(timeout=30)
    assert moved["worker"] != node
    again = call_tool.delay("time", "get_current_time", utc, project_id=project).get(timeout=30)
    assert again["worker"] != node
    assert client.get(AFFINITY_PREFIX + project) == again["worker"].encode()


def test_a_project_with_a_workspace_keeps_its_affinity_however_long_it_is_idle(broker: str) -> None:
    """Its affinity has no TTL (moving means a fresh clone); any other project's expires."""
    from tasks.router import AFFINITY_PREFIX, RedisAffinity

    client = redis.Redis.from_url(broker)
    affinity = RedisAffinity(client, ttl_s=60, sticky=lambda p: p.startswith("ws-"))
    affinity.set("ws-alpha", "w1@h")
    affinity.set("plain", "w1@h")
    try:
        assert client.ttl(AFFINITY_PREFIX + "ws-alpha") == -1
        assert 0 < int(client.ttl(AFFINITY_PREFIX + "plain")) <= 60
        assert affinity.get("ws-alpha") == "w1@h"
    finally:
        affinity.set("ws-alpha", None)
        affinity.set("plain", None)
