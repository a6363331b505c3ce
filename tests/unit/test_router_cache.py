"""ClusterRouter's per-server view cache decides exactly as building the views for every call did."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

import pytest

from tasks.policy.balancing import ALGORITHMS, choose_with_affinity
from tasks.registry import ServerHealth, WorkerBeat, worker_queue
from tasks.router import ClusterRouter, views
from tasks.routing import server_queue

SERVERS = ("git", "time", "everything")


def registry(rng: random.Random, n: int) -> dict[str, WorkerBeat]:
    beats = {}
    for i in range(n):
        offered = [s for s in SERVERS if rng.random() < 0.7] or ["git"]
        beats[f"w{i:02d}"] = WorkerBeat(
            node=f"w{i:02d}",
            queue=f"worker.w{i:02d}",
            pid=i,
            capacity=rng.choice([1, 4, 16]),
            in_flight=rng.randrange(0, 6),
            reserved=rng.randrange(0, 3),
            cpu_percent=rng.uniform(0, 100),
            memory_percent=rng.uniform(0, 100),
            beat_at_s=0.0,
            servers={
                s: ServerHealth(
                    state=rng.choice(["ready", "ready", "ready", "restarting"]),
                    healthy=rng.random() < 0.9,
                    breaker=rng.choice(["closed", "closed", "closed", "open"]),
                )
                for s in offered
            },
        )
    return beats


class Registry:
    def __init__(self, beats: dict[str, WorkerBeat]) -> None:
        self.beats = beats

    def alive(self) -> dict[str, WorkerBeat]:
        return dict(self.beats)


class Affinity:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, project_id: str) -> str | None:
        return self.data.get(project_id)

    def set(self, project_id: str, node: str | None) -> None:
        if node is None:
            self.data.pop(project_id, None)
        else:
            self.data[project_id] = node


class Reference:
    """The router as it was: views built from the registry copy and the routed counts per call."""

    def __init__(self, beats: dict[str, WorkerBeat], algorithm: Any) -> None:
        self.beats, self.algorithm = beats, algorithm
        self.affinity = Affinity()
        self.routed: Counter[str] = Counter()
        self.counter = itertools.count()
        self.rng = random.Random(1)

    def queue_for(self, server: str, project_id: str | None) -> str:
        if project_id is None and self.algorithm == "shared-queue":
            return server_queue(server)
        workers = views(self.beats, server, self.routed)
        open_breakers = frozenset(
            n for n, b in self.beats.items() if server in b.servers and b.servers[server].breaker != "closed"
        )
        affine = self.affinity.get(project_id) if project_id is not None else None
        node, changed = choose_with_affinity(
            server,
            project_id,
            affine,
            workers,
            algorithm=self.algorithm,
            open_breakers=open_breakers,
            counter=next(self.counter),
            rng=self.rng,
        )
        if changed and project_id is not None:
            self.affinity.set(project_id, node)
        if node is None:
            return server_queue(server)
        self.routed[node] += 1
        return worker_queue(node)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize(("workers", "seed"), [(1, 1), (4, 2), (12, 3), (40, 4)])
def test_cached_views_route_every_call_as_fresh_views_did(algorithm: str, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    beats = registry(rng, workers)
    cached = ClusterRouter(Registry(beats), Affinity(), algorithm=algorithm, cache_s=1e9, seed=1)  # type: ignore[arg-type]
    reference = Reference(beats, algorithm)
    for _ in range(400):
        server = rng.choice([*SERVERS, "absent"])
        project = rng.choice([None, None, "p1", "p2", "p3"])
        assert cached.queue_for(server, project, now_s=0.0) == reference.queue_for(server, project)


def test_a_new_registry_copy_drops_the_cached_views() -> None:
    only = WorkerBeat(
        node="w1", queue="worker.w1", pid=1, capacity=4, in_flight=0, reserved=0, cpu_percent=0.0,
        memory_percent=0.0, beat_at_s=0.0, servers={"git": ServerHealth(state="ready")},
    )  # fmt: skip
    reg = Registry({"w1": only})
    router = ClusterRouter(reg, Affinity(), algorithm="least-load", cache_s=1.0)  # type: ignore[arg-type]
    assert router.queue_for("git", None, now_s=0.0) == worker_queue("w1")
    reg.beats = {}  # the worker is gone: seen at the next registry read, not before
    assert router.queue_for("git", None, now_s=0.5) == worker_queue("w1")
    assert router.queue_for("git", None, now_s=2.0) == server_queue("git")
