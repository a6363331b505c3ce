"""tasks/policy/backoff.py: capped exponential delay, jitter in [d * (1 - jitter), d], RetryPolicy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.config_file import RetrySection
from tasks.policy.backoff import RetryPolicy, backoff_s, retry_delay_s


class FixedRandom(random.Random):
    """A generator whose random() always returns `value`: the jitter draw, pinned."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    ("attempt", "initial_s", "factor", "max_s", "delay"),
    [
        (1, 1.0, 2.0, 30.0, 1.0),
        (2, 1.0, 2.0, 30.0, 2.0),
        (3, 1.0, 2.0, 30.0, 4.0),
        (5, 1.0, 2.0, 30.0, 16.0),
        (6, 1.0, 2.0, 30.0, 30.0),  # 32 capped
        (6, 1.0, 2.0, 32.0, 32.0),  # exactly the cap
        (4, 0.5, 3.0, 100.0, 13.5),
        (3, 0.25, 1.5, 4.0, 0.5625),
        (9, 0.25, 1.5, 4.0, 4.0),  # 6.4 capped
        (7, 1.0, 1.0, 30.0, 1.0),  # factor 1: constant
        (1, 50.0, 2.0, 30.0, 30.0),  # initial above the cap: the cap
        (1, 0.0, 2.0, 30.0, 0.0),
        (10**9, 0.0, 2.0, 30.0, 0.0),  # 0 * overflow is still 0
        (1025, 0.1, 2.0, 10.0, 10.0),  # 0.1 * 2**1024 is not a float
        (10**6, 1.0, 2.0, 30.0, 30.0),
        (2**64, 1.0, 1.000001, 30.0, 30.0),
        (10**400, 1.0, 2.0, 30.0, 30.0),  # an int too large to be a float
        (3, 1.0, 2.0, 0.0, 0.0),  # max 0: never wait
    ],
)
def test_backoff_table(attempt: int, initial_s: float, factor: float, max_s: float, delay: float) -> None:
    got = backoff_s(attempt, initial_s=initial_s, factor=factor, max_s=max_s)
    assert isinstance(got, float)
    assert got == delay


@pytest.mark.parametrize(
    ("draw", "jitter", "delay"),
    [
        (0.0, 0.5, 8.0),  # the top of the range
        (0.5, 0.5, 6.0),  # equal jitter: 8 - 8 * 0.5 * 0.5
        (0.75, 0.5, 5.0),
        (0.5, 1.0, 4.0),  # full jitter: anywhere in [0, 8]
        (0.75, 1.0, 2.0),
        (0.5, 0.25, 7.0),
        (0.9, 0.0, 8.0),  # no jitter: the draw does not matter
    ],
)
def test_retry_delay_jitter(draw: float, jitter: float, delay: float) -> None:
    rng = FixedRandom(draw)
    got = retry_delay_s(4, initial_s=1.0, factor=2.0, max_s=30.0, jitter=jitter, rng=rng)
    assert got == pytest.approx(delay)
    assert rng.calls == 1


def test_retry_delay_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [
            retry_delay_s(a, initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.5, rng=rng) for a in range(1, 8)
        ]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": 0},
        {"attempt": -1},
        {"initial_s": -0.1},
        {"initial_s": float("nan")},
        {"max_s": -1.0},
        {"max_s": float("inf")},
        {"factor": 0.5},
        {"factor": float("inf")},
        {"jitter": -0.01},
        {"jitter": 1.01},
    ],
)
def test_retry_delay_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"attempt": 1, "initial_s": 1.0, "factor": 2.0, "max_s": 30.0, "jitter": 0.5}
    args |= kwargs
    with pytest.raises(ValueError):
        retry_delay_s(
            int(args["attempt"]),
            initial_s=args["initial_s"],
            factor=args["factor"],
            max_s=args["max_s"],
            jitter=args["jitter"],
            rng=random.Random(0),
        )


@given(
    attempt=st.integers(min_value=1, max_value=10**6),
    initial_s=st.floats(min_value=0, max_value=1e6),
    factor=st.floats(min_value=1, max_value=100),
    max_s=st.floats(min_value=0, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_delay_within_bounds(
    attempt: int, initial_s: float, factor: float, max_s: float, jitter: float, seed: int
) -> None:
    rng = random.Random(seed)
    delay = retry_delay_s(attempt, initial_s=initial_s, factor=factor, max_s=max_s, jitter=jitter, rng=rng)
    ceiling = backoff_s(attempt, initial_s=initial_s, factor=factor, max_s=max_s)
    assert 0.0 <= delay <= ceiling <= max_s
    assert delay >= ceiling * (1 - jitter) - 1e-9 * ceiling


@given(
    attempt=st.integers(min_value=1, max_value=5000),
    initial_s=st.floats(min_value=0, max_value=1e3),
    factor=st.floats(min_value=1, max_value=10),
    max_s=st.floats(min_value=0, max_value=1e6),
)
def test_backoff_upper_bound_never_decreases(
    attempt: int, initial_s: float, factor: float, max_s: float
) -> None:
    now = backoff_s(attempt, initial_s=initial_s, factor=factor, max_s=max_s)
    after = backoff_s(attempt + 1, initial_s=initial_s, factor=factor, max_s=max_s)
    assert now <= after <= max_s
    if after < max_s:
        assert after == pytest.approx(now * factor)


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.factor, policy.initial_s, policy.max_s, policy.jitter) == (
        3,
        2.0,
        1.0,
        30.0,
        0.5,
    )
    assert RetryPolicy.from_config(RetrySection()) == policy


def test_retry_policy_from_config_converts_ms() -> None:
    section = RetrySection.model_validate(
        {"maxAttempts": 5, "backoffMultiplier": 1.5, "initialDelay": 250, "maxDelay": 4000}
    )
    assert RetryPolicy.from_config(section) == RetryPolicy(
        max_attempts=5, factor=1.5, initial_s=0.25, max_s=4.0, jitter=0.5
    )
    assert RetryPolicy.from_config(section, jitter=1.0).jitter == 1.0


@pytest.mark.parametrize(
    ("max_attempts", "attempts_done", "retry"),
    [
        (3, 0, True),
        (3, 1, True),
        (3, 2, True),
        (3, 3, False),
        (3, 4, False),
        (1, 1, False),
        (1, 0, True),
    ],
)
def test_should_retry(max_attempts: int, attempts_done: int, retry: bool) -> None:
    assert RetryPolicy(max_attempts=max_attempts).should_retry(attempts_done) is retry


def test_policy_delay_uses_its_settings() -> None:
    policy = RetryPolicy(initial_s=0.5, factor=3.0, max_s=10.0, jitter=0.5)
    assert policy.delay_s(1, FixedRandom(0.0)) == 0.5
    assert policy.delay_s(3, FixedRandom(0.5)) == pytest.approx(4.5 * 0.75)
    assert policy.delay_s(4, FixedRandom(0.0)) == 10.0  # 13.5 capped


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"factor": 0.9}, {"initial_s": -1.0}, {"max_s": -1.0}, {"jitter": 2.0}],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
