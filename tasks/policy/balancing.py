"""Which worker runs a call for a server: candidates, fallbacks, the five algorithms, affinity.

Candidates are the workers offering the server, ranked in tiers, and only the best non-empty
tier is considered: (1) healthy with the breaker for this server not open, (2) healthy with it
open, (3) unhealthy with it not open, (4) unhealthy with it open. A degraded worker is thus used
only when no better one exists, rather than failing the call outright.

Every choice is deterministic given its arguments: the round-robin counter (kept and
incremented by the caller) stands in for state, and ties go to the smaller node name. `rng` is
accepted for algorithms that sample (none does today) so the signature does not change later.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from tasks.policy.weights import weighted_index

Algorithm = Literal["least-load", "round-robin", "weighted", "resource-based", "shared-queue"]
ALGORITHMS: frozenset[str] = frozenset(get_args(Algorithm))


@dataclass(frozen=True)
class WorkerView:
    """What the router knows of one worker (one entry per node): from its latest heartbeat.

    `capacity`: calls it runs at once (<= 0 is taken as 1). `cpu_percent`, `memory_percent`:
    0-100. `weight`: its share under "weighted", relative to the others' (>= 0).
    """

    node: str
    servers: frozenset[str]
    in_flight: int
    capacity: int
    cpu_percent: float
    memory_percent: float
    healthy: bool
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"worker {self.node}: weight must be a finite number >= 0, got {self.weight}")

    @property
    def load(self) -> float:
        """Fraction of its capacity in use (may exceed 1 when it is oversubscribed)."""
        return self.in_flight / max(self.capacity, 1)

    @property
    def headroom(self) -> float:
        """Free CPU plus free memory, in percentage points (0-200)."""
        return (100.0 - self.cpu_percent) + (100.0 - self.memory_percent)


@dataclass(frozen=True)
class Requirements:
    """Free CPU and memory (percent of the worker) a call needs, for "resource-based"."""

    cpu_percent: float = 0.0
    memory_percent: float = 0.0


def candidates(server: str, workers: Sequence[WorkerView], open_breakers: frozenset[str]) -> list[WorkerView]:
    """The best non-empty tier of workers offering `server` (see the module docstring), by node."""
    offering = [w for w in workers if server in w.servers]
    if not offering:
        return []
    rank = {id(w): (not w.healthy, w.node in open_breakers) for w in offering}
    best = min(rank.values())
    return sorted((w for w in offering if rank[id(w)] == best), key=lambda w: w.node)


def choose_worker(
    server: str,
    workers: Sequence[WorkerView],
    *,
    algorithm: Algorithm,
    open_breakers: frozenset[str],
    counter: int,
    rng: random.Random,
    requirements: Requirements = Requirements(),
) -> str | None:
    """The node to run a call for `server`, or None.

    None means: use the shared per-server queue ("shared-queue", always) or nobody offers the
    server. `open_breakers` are the nodes whose breaker for this server is open (or half-open
    with its probe taken). `counter` drives "round-robin" and "weighted".
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown balancing algorithm {algorithm!r}")
    if algorithm == "shared-queue":
        return None
    pool = candidates(server, workers, open_breakers)
    if not pool:
        return None
    if algorithm == "round-robin":
        return pool[counter % len(pool)].node
    if algorithm == "weighted":
        units = [max(1, round(w.weight * 100)) for w in pool]
        return pool[weighted_index(units, counter)].node
    if algorithm == "resource-based":
        return _resource_based(pool, requirements)
    return _least_loaded(pool)


def _least_loaded(pool: Sequence[WorkerView]) -> str:
    return min(pool, key=lambda w: (w.load, w.node)).node


def _resource_based(pool: Sequence[WorkerView], req: Requirements) -> str:
    """The fitting worker with the most free CPU + memory; least-load when none fits."""
    fits = [
        w
        for w in pool
        if 100.0 - w.cpu_percent >= req.cpu_percent and 100.0 - w.memory_percent >= req.memory_percent
    ]
    if not fits:
        return _least_loaded(pool)
    return min(fits, key=lambda w: (-w.headroom, w.load, w.node)).node


def choose_with_affinity(
    server: str,
    project_id: str | None,
    affine_node: str | None,
    workers: Sequence[WorkerView],
    *,
    algorithm: Algorithm,
    open_breakers: frozenset[str],
    counter: int,
    rng: random.Random,
    requirements: Requirements = Requirements(),
    sticky: bool = False,
) -> tuple[str | None, bool]:
    """The node for a project's call, and whether the stored affinity must change to it.

    The affine node is kept while it offers `server`, its breaker is not open and it is
    healthy (or no node is: while every session is still starting, moving the project gains
    nothing and would scatter it). Otherwise a node is chosen as by `choose_worker`;
    `changed` is True when it differs from `affine_node` (a first affinity, a move, or None:
    forget it). Under "shared-queue" a project
    still gets an affine worker, chosen by least-load, so its calls share one host's state.
    Without a project there is no affinity: `choose_worker` decides and `changed` is False.
    A `sticky` project (one with a workspace on its node's host: moving it means a fresh clone
    there and the old one's unpushed work left behind) stays while its node is alive and offers
    `server`, healthy or not: a session that is starting or failing is no reason to move it.
    """
    if (
        sticky
        and project_id is not None
        and any(w.node == affine_node and server in w.servers for w in workers)
    ):
        return affine_node, False
    any_healthy = any(server in w.servers and w.healthy and w.node not in open_breakers for w in workers)
    eligible = any(
        w.node == affine_node
        and server in w.servers
        and (w.healthy or not any_healthy)
        and w.node not in open_breakers
        for w in workers
    )
    if project_id is not None and affine_node is not None and eligible:
        return affine_node, False
    if project_id is not None and algorithm == "shared-queue":
        algorithm = "least-load"
    node = choose_worker(
        server,
        workers,
        algorithm=algorithm,
        open_breakers=open_breakers,
        counter=counter,
        rng=rng,
        requirements=requirements,
    )
    return node, project_id is not None and node != affine_node
