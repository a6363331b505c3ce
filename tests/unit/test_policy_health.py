"""tasks/policy/health.py: unhealthy after N consecutive failures, healthy after M successes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.config_file import HealthCheckSection
from tasks.policy.health import HealthPolicy, HealthState, observe

DEFAULT = HealthPolicy()
UP = HealthState()


def healthy_after_each(results: str, policy: HealthPolicy = DEFAULT, start: HealthState = UP) -> str:
    """'+' ok, '-' failed in; 'H' healthy, 'u' unhealthy out, one per check."""
    state, out = start, []
    for c in results:
        state = observe(state, c == "+", policy)
        out.append("H" if state.healthy else "u")
    return "".join(out)


@pytest.mark.parametrize(
    ("results", "unhealthy", "healthy", "marks"),
    [
        ("", 3, 2, ""),
        ("+++", 3, 2, "HHH"),
        ("--", 3, 2, "HH"),
        ("---", 3, 2, "HHu"),  # the third failure in a row
        ("--+--", 3, 2, "HHHHH"),  # a success breaks the run
        ("---+", 3, 2, "HHuu"),  # one success is not enough to come back
        ("---++", 3, 2, "HHuuH"),  # the second is
        ("---+-++", 3, 2, "HHuuuuH"),  # a failure restarts the run of successes
        ("-----+++", 3, 2, "HHuuuuHH"),
        ("-", 1, 1, "u"),
        ("-+-+", 1, 1, "uHuH"),
        ("----+++++", 4, 5, "HHHuuuuuH"),
    ],
)
def test_health_sequences(results: str, unhealthy: int, healthy: int, marks: str) -> None:
    policy = HealthPolicy(unhealthy_threshold=unhealthy, healthy_threshold=healthy)
    assert healthy_after_each(results, policy) == marks


def test_counters_are_the_current_run() -> None:
    state = HealthState()
    for ok in (False, False, False, False):
        state = observe(state, ok, DEFAULT)
    assert state == HealthState(healthy=False, consecutive_failures=4, consecutive_successes=0)
    state = observe(state, True, DEFAULT)
    assert state == HealthState(healthy=False, consecutive_failures=0, consecutive_successes=1)
    state = observe(state, True, DEFAULT)
    assert state == HealthState(healthy=True, consecutive_failures=0, consecutive_successes=2)


def test_starting_unhealthy() -> None:
    start = HealthState(healthy=False)
    assert healthy_after_each("+-++", DEFAULT, start) == "uuuH"


@given(
    results=st.lists(st.booleans(), max_size=80),
    unhealthy=st.integers(min_value=1, max_value=6),
    healthy=st.integers(min_value=1, max_value=6),
    start_healthy=st.booleans(),
)
def test_flips_exactly_at_thresholds(
    results: list[bool], unhealthy: int, healthy: int, start_healthy: bool
) -> None:
    policy = HealthPolicy(unhealthy_threshold=unhealthy, healthy_threshold=healthy)
    state = HealthState(healthy=start_healthy)
    for ok in results:
        before, state = state, observe(state, ok, policy)
        if ok:
            assert (state.consecutive_successes, state.consecutive_failures) == (
                before.consecutive_successes + 1,
                0,
            )
        else:
            assert (state.consecutive_failures, state.consecutive_successes) == (
                before.consecutive_failures + 1,
                0,
            )
        if before.healthy and not state.healthy:
            assert state.consecutive_failures == unhealthy
        if not before.healthy and state.healthy:
            assert state.consecutive_successes == healthy
        # no flip is missed: at or past a threshold, the status matches it
        if state.consecutive_failures >= unhealthy:
            assert not state.healthy
        if state.consecutive_successes >= healthy:
            assert state.healthy
        # and no flip comes early
        if 0 < state.consecutive_failures < unhealthy:
            assert state.healthy is before.healthy
        if 0 < state.consecutive_successes < healthy:
            assert state.healthy is before.healthy


def test_policy_from_config() -> None:
    assert HealthPolicy.from_config(HealthCheckSection()) == HealthPolicy(
        unhealthy_threshold=3, healthy_threshold=2
    )
    section = HealthCheckSection.model_validate({"unhealthyThreshold": 5, "healthyThreshold": 1})
    assert HealthPolicy.from_config(section) == HealthPolicy(unhealthy_threshold=5, healthy_threshold=1)


@pytest.mark.parametrize(("unhealthy", "healthy"), [(0, 2), (3, 0), (-1, -1)])
def test_policy_rejects_zero_thresholds(unhealthy: int, healthy: int) -> None:
    with pytest.raises(ValueError):
        HealthPolicy(unhealthy_threshold=unhealthy, healthy_threshold=healthy)


@pytest.mark.parametrize(("failures", "successes"), [(-1, 0), (0, -1), (1, 1)])
def test_state_rejects_impossible_counts(failures: int, successes: int) -> None:
    with pytest.raises(ValueError):
        HealthState(consecutive_failures=failures, consecutive_successes=successes)
