"""The options of a call, checked before it is queued: one caller's bad input must never reach a
worker (where a NaN timeout once restarted a session every caller shares)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.errors import InvalidArgumentsError, InvalidOptionError
from tasks.validation import (
    MAX_DEPTH,
    check_arguments_shape,
    check_flag,
    check_key,
    check_publish_options,
    check_timeout,
    nesting_depth,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        0,
        0.0,
        -1,
        -0.5,
        "5",
        b"5",
        True,
        False,
        [5],
        {"s": 5},
        8 * 86_400,
    ],
)
def test_a_bad_timeout_is_refused(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="timeout_s"):
        check_timeout(value)


@pytest.mark.parametrize(("value", "want"), [(None, None), (0.001, 0.001), (5, 5.0), (7 * 86_400, 604_800.0)])
def test_a_good_timeout_passes(value: Any, want: float | None) -> None:
    assert check_timeout(value) == want


@pytest.mark.parametrize(
    "options",
    [
        {"priority": -5},
        {"priority": 300},
        {"priority": 10},
        {"priority": 4.5},
        {"priority": "1"},
        {"priority": True},
        {"countdown": float("nan")},
        {"countdown": -1},
        {"countdown": "10"},
        {"countdown": 31 * 86_400},
        {"expires": 0},
        {"expires": -3},
        {"expires": float("inf")},
        {"expires": NOW - timedelta(seconds=1)},
        {"expires": "yesterday"},
        {"eta": "not a date"},
        {"eta": 12345},
        {"eta": NOW + timedelta(days=31)},
    ],
)
def test_bad_celery_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError, match=next(iter(options))):
        check_publish_options(options, now=NOW)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"priority": 0},
        {"priority": 9},
        {"countdown": 0},
        {"countdown": 2.5},
        {"expires": 30},
        {"expires": NOW + timedelta(hours=1)},
        {"expires": (NOW + timedelta(hours=1)).isoformat()},
        {"eta": NOW + timedelta(minutes=5)},
        {"eta": (NOW + timedelta(minutes=5)).replace(tzinfo=None)},  # naive: UTC, as Celery reads it
    ],
)
def test_good_celery_options_pass(options: dict[str, Any]) -> None:
    check_publish_options(options, now=NOW)


@pytest.mark.parametrize("value", ["", "x" * 1025, "a\nb", "tab\there", 5, b"k", ["k"]])
def test_a_bad_key_is_refused(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="idempotency_key"):
        check_key("idempotency_key", value)


def test_flags_are_booleans() -> None:
    assert check_flag("progress", True) is True
    assert check_flag("retry_interrupted", None, optional=True) is None
    for bad in ("yes", 1, 0, None):
        with pytest.raises(InvalidOptionError, match="progress"):
            check_flag("progress", bad)


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 255, 10_000, 100_000])
def test_deep_arguments_are_refused_without_recursion(depth: int) -> None:
    with pytest.raises(InvalidArgumentsError, match=f"more than {MAX_DEPTH} levels"):
        check_arguments_shape(nested(depth), max_bytes=10**9)


def test_arguments_at_the_depth_limit_pass() -> None:
    assert check_arguments_shape(nested(MAX_DEPTH), max_bytes=10**6)


@given(
    st.recursive(
        st.integers() | st.text(max_size=3),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
        max_leaves=30,
    )
)
def test_nesting_depth_is_the_depth(value: Any) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    assert nesting_depth(value, limit=1000) == depth(value)
