"""ClusterRouter with in-memory registry and affinity: the routing glue, no broker."""

from __future__ import annotations

from typing import Any

from tasks.registry import ServerHealth, WorkerBeat
from tasks.router import ClusterRouter, views


def beat(
    node: str, *, in_flight: int = 0, state: str = "ready", servers: tuple[str, ...] = ("git",)
) -> WorkerBeat:
    return WorkerBeat(
        node=node,
        queue=f"worker.{node}",
        pid=1,
        capacity=4,
        in_flight=in_flight,
        reserved=0,
        cpu_percent=10.0,
        memory_percent=10.0,
        beat_at_s=0.0,
        servers={s: ServerHealth(state=state) for s in servers},
    )


class FakeRegistry:
    def __init__(self, beats: dict[str, WorkerBeat]) -> None:
        self.beats = beats
        self.reads = 0

    def alive(self) -> dict[str, WorkerBeat]:
        self.reads += 1
        return dict(self.beats)


class FakeAffinity:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.gets = 0

    def get(self, project_id: str) -> str | None:
        self.gets += 1
        return self.data.get(project_id)

    def set(self, project_id: str, node: str | None) -> None:
        if node is None:
            self.data.pop(project_id, None)
        else:
            self.data[project_id] = node


def router(beats: dict[str, WorkerBeat], algorithm: Any = "least-load") -> tuple[ClusterRouter, Any, Any]:
    reg, aff = FakeRegistry(beats), FakeAffinity()
    return ClusterRouter(reg, aff, algorithm=algorithm, cache_s=1.0, seed=1), reg, aff  # type: ignore[arg-type]


def test_views_mark_a_server_healthy_only_when_its_session_serves() -> None:
    out = views({"a": beat("a"), "b": beat("b", state="failed"), "c": beat("c", servers=("time",))}, "git")
    assert [(v.node, v.healthy) for v in out] == [("a", True), ("b", False)]


def test_shared_queue_without_project_costs_no_registry_read() -> None:
    r, reg, _ = router({"a": beat("a")}, algorithm="shared-queue")
    assert r.queue_for("git", None, now_s=0.0) == "mcp.git"
    assert reg.reads == 0


def test_least_load_without_project_picks_the_idlest_worker() -> None:
    r, _, _ = router({"a": beat("a", in_flight=3), "b": beat("b", in_flight=1)})
    assert r.queue_for("git", None, now_s=0.0) == "worker.b"


def test_no_worker_offers_the_server_falls_back_to_its_shared_queue() -> None:
    r, _, aff = router({"a": beat("a", servers=("time",))})
    assert r.queue_for("git", "p1", now_s=0.0) == "mcp.git"
    assert aff.data == {}


def test_affinity_is_created_kept_and_moved() -> None:
    beats = {"a": beat("a", in_flight=2), "b": beat("b", in_flight=0)}
    r, _, aff = router(beats)
    assert r.queue_for("git", "p1", now_s=0.0) == "worker.b"
    assert aff.data == {"p1": "b"}
    beats["b"] = beat("b", in_flight=9)  # b got busy: the project stays there anyway
    r.registry.beats = beats  # type: ignore[attr-defined]
    assert r.queue_for("git", "p1", now_s=2.0) == "worker.b"
    del beats["b"]  # b is gone: the project moves and the move is recorded
    assert r.queue_for("git", "p1", now_s=4.0) == "worker.a"
    assert aff.data == {"p1": "a"}


def test_registry_and_affinity_reads_are_cached_for_cache_s() -> None:
    r, reg, aff = router({"a": beat("a")})
    for i in range(50):
        r.queue_for("git", "p1", now_s=0.5 + i * 0.01)
    assert reg.reads == 1 and aff.gets == 1
    r.queue_for("git", "p1", now_s=1.6)
    assert reg.reads == 2 and aff.gets == 2


def test_least_load_spreads_new_projects_between_registry_reads() -> None:
    """Idle workers all look alike until the next heartbeat: the calls this producer routed count."""
    r, _, aff = router({n: beat(n) for n in ("a", "b", "c")})
    queues = [r.queue_for("git", f"p{i}", now_s=0.1 * i / 10) for i in range(9)]
    assert sorted(queues) == sorted(["worker.a", "worker.b", "worker.c"] * 3)
    assert set(aff.data.values()) == {"a", "b", "c"}
