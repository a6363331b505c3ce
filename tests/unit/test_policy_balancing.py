"""tasks/policy/balancing.py: candidate tiers, the five algorithms, and project affinity."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.policy.balancing import (
    Algorithm,
    Requirements,
    WorkerView,
    candidates,
    choose_with_affinity,
    choose_worker,
)
from tasks.policy.weights import spread_stride, weighted_index

ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
ROUTED: tuple[Algorithm, ...] = tuple(a for a in ALGORITHMS if a != "shared-queue")
NO_BREAKERS: frozenset[str] = frozenset()
NO_NEEDS = Requirements()


def w(
    node: str,
    servers: str = "git",
    in_flight: int = 0,
    capacity: int = 4,
    cpu: float = 10.0,
    mem: float = 10.0,
    healthy: bool = True,
    weight: float = 1.0,
) -> WorkerView:
    return WorkerView(
        node=node,
        servers=frozenset(servers.split(",")) if servers else frozenset(),
        in_flight=in_flight,
        capacity=capacity,
        cpu_percent=cpu,
        memory_percent=mem,
        healthy=healthy,
        weight=weight,
    )


def choose(
    workers: list[WorkerView],
    algorithm: Algorithm,
    *,
    server: str = "git",
    open_breakers: frozenset[str] = NO_BREAKERS,
    counter: int = 0,
    requirements: Requirements = NO_NEEDS,
) -> str | None:
    return choose_worker(
        server,
        workers,
        algorithm=algorithm,
        open_breakers=open_breakers,
        counter=counter,
        rng=random.Random(0),
        requirements=requirements,
    )


CLUSTER = [
    w("b", in_flight=3, capacity=4, cpu=80, mem=30, weight=1.0),  # load 0.75
    w("a", in_flight=1, capacity=4, cpu=20, mem=70, weight=2.0),  # load 0.25
    w("c", in_flight=1, capacity=2, cpu=40, mem=40, weight=1.0),  # load 0.5
    w("d", servers="time", in_flight=0, capacity=8, cpu=0, mem=0),  # does not run git
]


@pytest.mark.parametrize(
    ("algorithm", "counter", "requirements", "node"),
    [
        ("least-load", 0, Requirements(), "a"),
        ("least-load", 7, Requirements(), "a"),  # the counter does not matter
        ("round-robin", 0, Requirements(), "a"),
        ("round-robin", 1, Requirements(), "b"),
        ("round-robin", 2, Requirements(), "c"),
        ("round-robin", 3, Requirements(), "a"),
        ("round-robin", -1, Requirements(), "c"),
        ("resource-based", 0, Requirements(), "c"),  # headroom a 110, b 90, c 120
        ("resource-based", 0, Requirements(memory_percent=65), "b"),  # only b has 70 % memory free
        ("resource-based", 0, Requirements(cpu_percent=70), "a"),  # only a has 80 % CPU free
        ("resource-based", 0, Requirements(cpu_percent=60, memory_percent=60), "c"),
        ("resource-based", 0, Requirements(cpu_percent=90), "a"),  # nobody fits: least-load
        ("shared-queue", 0, Requirements(), None),
        ("shared-queue", 5, Requirements(), None),
    ],
)
def test_choose_table(
    algorithm: Algorithm, counter: int, requirements: Requirements, node: str | None
) -> None:
    assert choose(CLUSTER, algorithm, counter=counter, requirements=requirements) == node


@pytest.mark.parametrize(
    ("workers", "node"),
    [
        ([w("a", in_flight=2, capacity=4), w("b", in_flight=1, capacity=2)], "a"),  # 0.5 = 0.5: by name
        ([w("b", in_flight=1, capacity=2), w("a", in_flight=2, capacity=4)], "a"),  # order does not matter
        ([w("a", in_flight=1, capacity=0), w("b", in_flight=2, capacity=1)], "a"),  # capacity 0 counts as 1
        ([w("a", in_flight=3, capacity=-5), w("b", in_flight=2, capacity=1)], "b"),
        ([w("a", in_flight=9, capacity=10), w("b", in_flight=0, capacity=1)], "b"),
        ([w("z", in_flight=5, capacity=4)], "z"),  # oversubscribed but the only one
        ([w("ba", in_flight=1, capacity=2), w("ab", in_flight=2, capacity=4)], "ab"),  # ties: smaller name
    ],
)
def test_least_load(workers: list[WorkerView], node: str) -> None:
    assert choose(workers, "least-load") == node


@pytest.mark.parametrize(
    ("workers", "open_breakers", "node"),
    [
        # healthy and closed wins over a less loaded healthy-but-open or unhealthy worker
        ([w("a"), w("b", in_flight=3)], frozenset({"a"}), "b"),
        ([w("a", healthy=False), w("b", in_flight=3)], NO_BREAKERS, "b"),
        # no healthy closed one: healthy-but-open next
        ([w("a", healthy=False), w("b", in_flight=3)], frozenset({"b"}), "b"),
        ([w("a", healthy=False), w("b", in_flight=3), w("c", in_flight=1)], frozenset({"b", "c"}), "c"),
        # then unhealthy with a closed breaker, then unhealthy and open
        ([w("a", healthy=False), w("b", healthy=False, in_flight=3)], frozenset({"a"}), "b"),
        ([w("a", healthy=False), w("b", healthy=False, in_flight=3)], frozenset({"a", "b"}), "a"),
        # a breaker open on a worker that does not offer the server is irrelevant
        ([w("a", in_flight=2), w("x", servers="time")], frozenset({"x"}), "a"),
        # nobody offers it
        ([w("a", servers="time"), w("b", servers="")], NO_BREAKERS, None),
        ([], NO_BREAKERS, None),
    ],
)
def test_fallback_tiers(workers: list[WorkerView], open_breakers: frozenset[str], node: str | None) -> None:
    assert choose(workers, "least-load", open_breakers=open_breakers) == node


def test_candidates_are_the_best_tier_sorted() -> None:
    workers = [w("c"), w("a", healthy=False), w("b"), w("d", servers="time")]
    assert [v.node for v in candidates("git", workers, frozenset({"c"}))] == ["b"]
    assert [v.node for v in candidates("git", workers, NO_BREAKERS)] == ["b", "c"]
    assert candidates("nope", workers, NO_BREAKERS) == []


def test_weighted_cycle_exact() -> None:
    workers = [w("b", weight=1.0), w("a", weight=2.0), w("c", weight=0.5)]
    # units a 200, b 100, c 50 -> a 4, b 2, c 1 per cycle of 7
    picks = [choose(workers, "weighted", counter=i) for i in range(7)]
    assert picks == ["a", "b", "a", "b", "a", "c", "a"]  # spread by stride 4, not a a a a b b c
    assert picks == [choose(workers, "weighted", counter=i + 700) for i in range(7)]


def test_weighted_spreads_turns() -> None:
    # equal weights alternate instead of giving 100 calls in a row to one worker
    workers = [w("a", weight=1.0), w("b", weight=1.0)]
    assert [choose(workers, "weighted", counter=i) for i in range(6)] == ["a", "b"] * 3


@pytest.mark.parametrize(
    ("weights", "units"),
    [
        ((1.0, 1.0), (100, 100)),
        ((0.0, 1.0), (1, 100)),  # weight 0 still gets the minimum, 1 unit
        ((0.004, 0.006), (1, 1)),
        ((1.234, 0.5), (123, 50)),
    ],
)
def test_weight_units(weights: tuple[float, float], units: tuple[int, int]) -> None:
    workers = [w("a", weight=weights[0]), w("b", weight=weights[1])]
    total = sum(units)
    picks = Counter(choose(workers, "weighted", counter=i) for i in range(total))
    assert picks == {"a": units[0], "b": units[1]}


@pytest.mark.parametrize(("total", "stride"), [(1, 1), (2, 1), (3, 2), (4, 3), (7, 4), (200, 127), (6, 5)])
def test_spread_stride(total: int, stride: int) -> None:
    assert spread_stride(total) == stride


@pytest.mark.parametrize("units", [[], [0], [3, 0], [-1, 2]])
def test_weighted_index_rejects_bad_units(units: list[int]) -> None:
    with pytest.raises(ValueError):
        weighted_index(units, 0)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_worker_view_rejects_bad_weight(weight: float) -> None:
    with pytest.raises(ValueError):
        w("a", weight=weight)


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown balancing algorithm"):
        choose([w("a")], "random")  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------------------

NODES = ["n0", "n1", "n2", "n3", "n4", "n5"]


@st.composite
def clusters(draw: st.DrawFn) -> list[WorkerView]:
    nodes = draw(st.lists(st.sampled_from(NODES), unique=True, max_size=len(NODES)))
    return [
        WorkerView(
            node=node,
            servers=frozenset(draw(st.sets(st.sampled_from(["git", "time", "code"]), max_size=3))),
            in_flight=draw(st.integers(min_value=0, max_value=20)),
            capacity=draw(st.integers(min_value=-1, max_value=8)),
            cpu_percent=draw(st.floats(min_value=0, max_value=100)),
            memory_percent=draw(st.floats(min_value=0, max_value=100)),
            healthy=draw(st.booleans()),
            weight=draw(st.floats(min_value=0, max_value=5)),
        )
        for node in nodes
    ]


_breakers = st.frozensets(st.sampled_from(NODES))
_requirements = st.builds(
    Requirements,
    cpu_percent=st.floats(min_value=0, max_value=100),
    memory_percent=st.floats(min_value=0, max_value=100),
)


@given(
    workers=clusters(),
    algorithm=st.sampled_from(ROUTED),
    open_breakers=_breakers,
    counter=st.integers(min_value=-(10**6), max_value=10**6),
    requirements=_requirements,
)
def test_choice_offers_the_server_and_prefers_healthy_closed(
    workers: list[WorkerView],
    algorithm: Algorithm,
    open_breakers: frozenset[str],
    counter: int,
    requirements: Requirements,
) -> None:
    node = choose(workers, algorithm, open_breakers=open_breakers, counter=counter, requirements=requirements)
    offering = {v.node: v for v in workers if "git" in v.servers}
    if not offering:
        assert node is None
        return
    assert node in offering
    chosen = offering[node]
    good = [v for v in offering.values() if v.healthy and v.node not in open_breakers]
    if good:
        assert chosen.healthy and node not in open_breakers
    elif any(v.healthy for v in offering.values()):
        assert chosen.healthy
    # the same inputs give the same node
    again = choose(
        workers, algorithm, open_breakers=open_breakers, counter=counter, requirements=requirements
    )
    assert again == node


@given(workers=clusters(), open_breakers=_breakers, counter=st.integers())
def test_shared_queue_is_always_none(
    workers: list[WorkerView], open_breakers: frozenset[str], counter: int
) -> None:
    assert choose(workers, "shared-queue", open_breakers=open_breakers, counter=counter) is None


@given(
    weights=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=5),
    start=st.integers(min_value=-(10**9), max_value=10**9),
    cycles=st.integers(min_value=1, max_value=3),
)
def test_weighted_shares_are_exact(weights: list[float], start: int, cycles: int) -> None:
    workers = [w(f"n{i}", weight=x) for i, x in enumerate(weights)]
    units = {f"n{i}": max(1, round(x * 100)) for i, x in enumerate(weights)}
    total = sum(units.values())
    picks = Counter(choose(workers, "weighted", counter=start + i) for i in range(cycles * total))
    assert picks == {node: cycles * u for node, u in units.items()}


@given(
    size=st.integers(min_value=1, max_value=6),
    start=st.integers(min_value=-(10**9), max_value=10**9),
    rounds=st.integers(min_value=1, max_value=4),
)
def test_round_robin_visits_all_equally(size: int, start: int, rounds: int) -> None:
    workers = [w(f"n{i}", in_flight=i) for i in reversed(range(size))]
    picks = [choose(workers, "round-robin", counter=start + i) for i in range(rounds * size)]
    assert Counter(picks) == {f"n{i}": rounds for i in range(size)}
    # consecutive counters never repeat a worker when there are two or more
    if size > 1:
        assert all(x != y for x, y in pairwise(picks))


# -- affinity ---------------------------------------------------------------------------------


def affine(
    workers: list[WorkerView],
    affine_node: str | None,
    algorithm: Algorithm = "round-robin",
    *,
    project_id: str | None = "p1",
    open_breakers: frozenset[str] = NO_BREAKERS,
    counter: int = 0,
    sticky: bool = False,
) -> tuple[str | None, bool]:
    return choose_with_affinity(
        "git",
        project_id,
        affine_node,
        workers,
        algorithm=algorithm,
        open_breakers=open_breakers,
        counter=counter,
        rng=random.Random(0),
        sticky=sticky,
    )


@pytest.mark.parametrize(
    ("kwargs", "result"),
    [
        # eligible affine node: kept, whatever the algorithm would pick
        ({"affine_node": "c"}, ("c", False)),
        ({"affine_node": "c", "algorithm": "least-load"}, ("c", False)),
        ({"affine_node": "b", "algorithm": "shared-queue"}, ("b", False)),
        # first affinity: chosen by the algorithm, and recorded
        ({"affine_node": None}, ("a", True)),
        ({"affine_node": None, "counter": 1}, ("b", True)),
        # shared-queue with a project: least-load creates the affinity
        ({"affine_node": None, "algorithm": "shared-queue"}, ("a", True)),
        # affine node with an open breaker, unhealthy, gone, or not running the server: moved
        ({"affine_node": "c", "open_breakers": frozenset({"c"}), "counter": 2}, ("a", True)),
        ({"affine_node": "e", "algorithm": "least-load"}, ("a", True)),
        ({"affine_node": "gone", "algorithm": "least-load"}, ("a", True)),
        ({"affine_node": "d", "algorithm": "least-load"}, ("a", True)),
        # no project: no affinity; the algorithm decides and nothing is recorded
        ({"affine_node": "c", "project_id": None, "counter": 1}, ("b", False)),
        ({"affine_node": None, "project_id": None, "algorithm": "shared-queue"}, (None, False)),
    ],
)
def test_affinity_table(kwargs: dict[str, Any], result: tuple[str | None, bool]) -> None:
    workers = [*CLUSTER, w("e", healthy=False)]
    assert affine(workers, **kwargs) == result


def test_while_no_node_is_healthy_the_project_stays_where_it_is() -> None:
    """Every session still starting (a cluster that just came up): moving the project would
    only scatter its calls; once another node is healthy and the affine one is not, it moves."""
    starting = [w("a", healthy=False), w("b", healthy=False)]
    assert affine(starting, "b", "least-load") == ("b", False)
    assert affine(starting, "b", "least-load", open_breakers=frozenset({"b"})) == ("a", True)
    assert affine([w("a"), w("b", healthy=False)], "b", "least-load") == ("a", True)


def test_a_project_with_a_workspace_moves_only_when_its_node_is_gone() -> None:
    """Moving a sticky project means a fresh clone elsewhere: a session that is starting, or a
    breaker that is open, is no reason; a node that is gone or no longer offers the server is."""
    cluster = [w("a"), w("b", healthy=False)]
    assert affine(cluster, "b", "least-load", sticky=True) == ("b", False)
    assert affine(cluster, "b", "least-load", sticky=True, open_breakers=frozenset({"b"})) == ("b", False)
    assert affine(cluster, "gone", "least-load", sticky=True) == ("a", True)
    assert affine([w("a"), w("b", servers="time")], "b", "least-load", sticky=True) == ("a", True)
    assert affine(cluster, None, "least-load", sticky=True) == ("a", True)
    assert affine(cluster, "b", "least-load") == ("a", True), "not sticky: it moves off an unhealthy node"


def test_affinity_fallback_may_land_on_the_affine_node() -> None:
    # the only worker is unhealthy: it is still used (fallback), and the affinity does not change
    assert affine([w("a", healthy=False)], "a") == ("a", False)
    # nobody offers the server any more: forget the affinity
    assert affine([w("a", servers="time")], "a") == (None, True)
    assert affine([w("a", servers="time")], None) == (None, False)


@given(
    workers=clusters(),
    algorithm=st.sampled_from(ALGORITHMS),
    open_breakers=_breakers,
    counter=st.integers(min_value=0, max_value=10**6),
    affine_node=st.none() | st.sampled_from(NODES),
)
def test_affinity_is_stable(
    workers: list[WorkerView],
    algorithm: Algorithm,
    open_breakers: frozenset[str],
    counter: int,
    affine_node: str | None,
) -> None:
    node, changed = affine(workers, affine_node, algorithm, open_breakers=open_breakers, counter=counter)
    assert (node, changed) == affine(
        workers, affine_node, algorithm, open_breakers=open_breakers, counter=counter
    )
    assert changed is (node != affine_node)
    eligible = {v.node for v in workers if "git" in v.servers and v.healthy and v.node not in open_breakers}
    if affine_node in eligible:
        assert (node, changed) == (affine_node, False)
        # kept on every later call while eligible, whatever the counter
        for later in range(counter + 1, counter + 4):
            assert affine(workers, node, algorithm, open_breakers=open_breakers, counter=later) == (
                node,
                False,
            )
    elif eligible:
        assert node in eligible
    # once recorded, a newly chosen eligible node stays
    if node in eligible:
        assert affine(workers, node, algorithm, open_breakers=open_breakers, counter=counter + 1) == (
            node,
            False,
        )
