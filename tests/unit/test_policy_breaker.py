"""tasks/policy/breaker.py: closed -> open at the threshold -> one half-open probe -> closed or open."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.policy.breaker import BreakerPolicy, BreakerState, allow, on_failure, on_success

POLICY = BreakerPolicy(threshold=3, open_s=10.0)

Op = Literal["allow", "ok", "fail"]


def run(events: list[tuple[Op, float]], policy: BreakerPolicy = POLICY) -> tuple[list[bool], BreakerState]:
    """Apply events in order; return the decisions of the `allow` events and the final state."""
    state, decisions = BreakerState(), []
    for op, now_s in events:
        if op == "allow":
            allowed, state = allow(state, now_s, policy)
            decisions.append(allowed)
        elif op == "ok":
            state = on_success(state, now_s, policy)
        else:
            state = on_failure(state, now_s, policy)
    return decisions, state


@pytest.mark.parametrize(
    ("events", "decisions", "final"),
    [
        ([], [], BreakerState()),
        ([("allow", 0)], [True], BreakerState()),
        ([("fail", 0), ("fail", 1)], [], BreakerState(failures=2)),
        # a success in between resets the count: 2 + 2 failures do not open it
        ([("fail", 0), ("fail", 1), ("ok", 2), ("fail", 3), ("fail", 4)], [], BreakerState(failures=2)),
        # the third consecutive failure opens it
        (
            [("fail", 0), ("fail", 1), ("fail", 2), ("allow", 3), ("allow", 11.9)],
            [False, False],
            BreakerState(status="open", failures=3, opened_at_s=2.0),
        ),
        # open_s after opening: exactly one probe, the next call is denied
        (
            [("fail", 0), ("fail", 1), ("fail", 2), ("allow", 12), ("allow", 12.5), ("allow", 500)],
            [True, False, False],
            BreakerState(
                status="half-open", failures=3, opened_at_s=2.0, probe_in_flight=True, probe_started_at_s=12.0
            ),
        ),
        # the probe succeeds: closed, failures forgotten, calls flow
        (
            [("fail", 0), ("fail", 1), ("fail", 2), ("allow", 12), ("ok", 13), ("allow", 13), ("allow", 13)],
            [True, True, True],
            BreakerState(),
        ),
        # the probe fails: open again from the probe's failure, a new probe open_s later
        (
            [
                ("fail", 0),
                ("fail", 1),
                ("fail", 2),
                ("allow", 12),
                ("fail", 14),
                ("allow", 23.9),
                ("allow", 24),
            ],
            [True, False, True],
            BreakerState(
                status="half-open",
                failures=4,
                opened_at_s=14.0,
                probe_in_flight=True,
                probe_started_at_s=24.0,
            ),
        ),
        # late reports while open change nothing: no extension, no closing
        (
            [("fail", 0), ("fail", 1), ("fail", 2), ("fail", 9), ("ok", 9), ("allow", 12)],
            [True],
            BreakerState(
                status="half-open", failures=3, opened_at_s=2.0, probe_in_flight=True, probe_started_at_s=12.0
            ),
        ),
    ],
)
def test_breaker_scenarios(
    events: list[tuple[Op, float]], decisions: list[bool], final: BreakerState
) -> None:
    assert run(events) == (decisions, final)


def test_threshold_one_opens_on_first_failure() -> None:
    state = on_failure(BreakerState(), 5.0, BreakerPolicy(threshold=1, open_s=0.0))
    assert state == BreakerState(status="open", failures=1, opened_at_s=5.0)
    # open_s 0: the probe may go at once
    assert allow(state, 5.0, BreakerPolicy(threshold=1, open_s=0.0))[0] is True


def test_closed_success_without_failures_returns_the_same_state() -> None:
    state = BreakerState()
    assert on_success(state, 1.0, POLICY) is state


def test_lost_probe_is_replaced_after_probe_timeout() -> None:
    policy = BreakerPolicy(threshold=1, open_s=10.0, probe_timeout_s=30.0)
    state = on_failure(BreakerState(), 0.0, policy)
    assert allow(state, 10.0, policy)[0] is True
    _, state = allow(state, 10.0, policy)
    assert allow(state, 39.9, policy)[0] is False
    allowed, state = allow(state, 40.0, policy)
    assert allowed is True
    assert (state.status, state.probe_in_flight, state.probe_started_at_s) == ("half-open", True, 40.0)
    assert allow(state, 40.0, policy)[0] is False


def test_half_open_without_probe_lets_one_through() -> None:
    state = BreakerState(status="half-open", failures=5, opened_at_s=0.0)
    allowed, state = allow(state, 1.0, POLICY)
    assert allowed is True
    assert allow(state, 1.0, POLICY)[0] is False


@given(threshold=st.integers(min_value=1, max_value=30))
def test_opens_exactly_at_threshold(threshold: int) -> None:
    policy = BreakerPolicy(threshold=threshold, open_s=60.0)
    state = BreakerState()
    for i in range(threshold - 1):
        state = on_failure(state, float(i), policy)
        assert state == BreakerState(failures=i + 1)
        assert allow(state, float(i), policy)[0] is True
    state = on_failure(state, 100.0, policy)
    assert state == BreakerState(status="open", failures=threshold, opened_at_s=100.0)
    assert allow(state, 100.0, policy)[0] is False


_events = st.lists(
    st.tuples(st.sampled_from(["allow", "allow", "ok", "fail"]), st.floats(min_value=0, max_value=20)),
    max_size=60,
)


@given(events=_events, threshold=st.integers(min_value=1, max_value=4), open_s=st.sampled_from([0.0, 5.0]))
def test_never_two_probes_in_half_open(
    events: list[tuple[str, float]], threshold: int, open_s: float
) -> None:
    policy = BreakerPolicy(threshold=threshold, open_s=open_s)
    state, now_s, probes_out = BreakerState(), 0.0, 0
    for op, step_s in events:
        now_s += step_s
        before = state
        if op == "allow":
            allowed, state = allow(state, now_s, policy)
            if before.status == "closed":
                assert allowed and state is before
            elif before.probe_in_flight:
                assert not allowed and state is before
            elif before.status == "open":
                assert before.opened_at_s is not None
                assert allowed is (now_s - before.opened_at_s >= open_s)
            if allowed and before.status != "closed":
                # a call through a non-closed breaker is the probe, and only one is ever out
                probes_out += 1
                assert (state.status, state.probe_in_flight, state.probe_started_at_s) == (
                    "half-open",
                    True,
                    now_s,
                )
        else:
            state = (on_success if op == "ok" else on_failure)(state, now_s, policy)
            probes_out = 0
        assert probes_out <= 1
        assert state.status == "closed" or state.opened_at_s is not None
        assert state.status != "closed" or state.failures < threshold


_states = st.one_of(
    st.builds(BreakerState, failures=st.integers(min_value=0, max_value=10)),
    st.builds(
        BreakerState,
        status=st.just("open"),
        failures=st.integers(min_value=0, max_value=10),
        opened_at_s=st.floats(min_value=0, max_value=2e9),
    ),
    st.builds(
        BreakerState,
        status=st.just("half-open"),
        failures=st.integers(min_value=0, max_value=10),
        opened_at_s=st.floats(min_value=0, max_value=2e9),
        probe_in_flight=st.booleans(),
        probe_started_at_s=st.none() | st.floats(min_value=0, max_value=2e9),
    ),
)


@given(state=_states)
def test_json_round_trip(state: BreakerState) -> None:
    data = state.to_json()
    assert BreakerState.from_json(json.loads(json.dumps(data))) == state


def test_to_json_exact() -> None:
    state = BreakerState(status="open", failures=5, opened_at_s=12.5)
    assert state.to_json() == {
        "status": "open",
        "failures": 5,
        "opened_at_s": 12.5,
        "probe_in_flight": False,
        "probe_started_at_s": None,
    }
    assert BreakerState.from_json({}) == BreakerState()
    assert BreakerState.from_json({"status": "open", "failures": 5, "opened_at_s": 12}) == BreakerState(
        status="open", failures=5, opened_at_s=12.0
    )


@pytest.mark.parametrize(
    "data",
    [
        {"status": "ajar"},
        {"status": "open"},  # open without opened_at_s
        {"failures": -1},
        {"failures": "3"},
        {"failures": True},
        {"failures": 1.5},
        {"probe_in_flight": "yes"},
        {"status": "closed", "probe_in_flight": True},
        {"status": "open", "opened_at_s": "soon"},
        {"status": "open", "opened_at_s": True},
    ],
)
def test_from_json_rejects_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerState.from_json(data)


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"open_s": -1.0}, {"open_s": float("nan")}, {"probe_timeout_s": 0.0}],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)
