"""Circuit breaker for one (worker, server) pair: a pure state machine.

closed --threshold consecutive failures--> open --open_s elapsed, one probe allowed--> half-open
half-open --probe succeeds--> closed;  half-open --probe fails--> open (the clock restarts).

Late reports while open (a call that started before the breaker opened) change nothing: a late
failure does not extend the open period and a late success does not close it; only the probe
decides. `now_s` is wall-clock seconds (`time.time()`): the state is shared between hosts
through Redis, so a per-process monotonic clock would not do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

BreakerStatus = Literal["closed", "open", "half-open"]
_STATUSES: frozenset[str] = frozenset(get_args(BreakerStatus))


@dataclass(frozen=True)
class BreakerPolicy:
    """`threshold` consecutive failures open the breaker for `open_s` seconds.

    `probe_timeout_s`: a half-open probe that has reported neither success nor failure after this
    long is deemed lost (its worker died mid-call) and the next call may probe again. None (the
    default) waits for the report forever; the router's fallback still reaches the pair when no
    other worker is eligible.
    """

    threshold: int = 5
    open_s: float = 60.0
    probe_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        if not (math.isfinite(self.open_s) and self.open_s >= 0):
            raise ValueError(f"open_s must be a finite number >= 0, got {self.open_s}")
        if self.probe_timeout_s is not None and not self.probe_timeout_s > 0:
            raise ValueError(f"probe_timeout_s must be > 0 or None, got {self.probe_timeout_s}")


@dataclass(frozen=True)
class BreakerState:
    """`failures`: consecutive failures while closed. `opened_at_s`: when it last opened (None
    while closed). `probe_started_at_s`: when the half-open probe was let through."""

    status: BreakerStatus = "closed"
    failures: int = 0
    opened_at_s: float | None = None
    probe_in_flight: bool = False
    probe_started_at_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {self.status!r}")
        if self.failures < 0:
            raise ValueError(f"failures must be >= 0, got {self.failures}")
        if self.status != "closed" and self.opened_at_s is None:
            raise ValueError(f"a {self.status} breaker needs opened_at_s")
        if self.probe_in_flight and self.status != "half-open":
            raise ValueError("only a half-open breaker has a probe in flight")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, for storing the state in Redis."""
        return {
            "status": self.status,
            "failures": self.failures,
            "opened_at_s": self.opened_at_s,
            "probe_in_flight": self.probe_in_flight,
            "probe_started_at_s": self.probe_started_at_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BreakerState:
        """The inverse of `to_json`; missing keys take their defaults, wrong types raise ValueError."""
        failures = data.get("failures", 0)
        probe = data.get("probe_in_flight", False)
        if not isinstance(failures, int) or isinstance(failures, bool):
            raise ValueError(f"breaker failures must be an integer, got {failures!r}")
        if not isinstance(probe, bool):
            raise ValueError(f"breaker probe_in_flight must be a boolean, got {probe!r}")
        return cls(
            status=data.get("status", "closed"),
            failures=failures,
            opened_at_s=_seconds(data, "opened_at_s"),
            probe_in_flight=probe,
            probe_started_at_s=_seconds(data, "probe_started_at_s"),
        )


CLOSED = BreakerState()


def allow(state: BreakerState, now_s: float, policy: BreakerPolicy) -> tuple[bool, BreakerState]:
    """May a call go through now? Returns the decision and the state to store.

    Closed: yes. Open: no until `open_s` has elapsed since it opened; then it turns half-open and
    lets exactly one probe through. Half-open with a probe in flight: no (unless the probe is
    older than `probe_timeout_s`, see BreakerPolicy).
    """
    if state.status == "closed":
        return True, state
    if state.status == "open":
        assert state.opened_at_s is not None
        if now_s - state.opened_at_s < policy.open_s:
            return False, state
        return True, _probing(state, now_s)
    if state.probe_in_flight and not _probe_lost(state, now_s, policy):
        return False, state
    return True, _probing(state, now_s)


def on_success(state: BreakerState, now_s: float, policy: BreakerPolicy) -> BreakerState:
    """A call through this pair succeeded: half-open closes; closed forgets its failures."""
    if state.status == "half-open":
        return CLOSED
    if state.status == "closed" and state.failures:
        return CLOSED
    return state


def on_failure(state: BreakerState, now_s: float, policy: BreakerPolicy) -> BreakerState:
    """A call through this pair failed (a transport fault, not a tool's own error).

    Closed: one more failure, and open at `threshold`. Half-open: open again from `now_s`.
    """
    if state.status == "closed":
        failures = state.failures + 1
        if failures >= policy.threshold:
            return BreakerState(status="open", failures=failures, opened_at_s=now_s)
        return replace(state, failures=failures)
    if state.status == "half-open":
        return BreakerState(status="open", failures=state.failures + 1, opened_at_s=now_s)
    return state


def _probing(state: BreakerState, now_s: float) -> BreakerState:
    return replace(state, status="half-open", probe_in_flight=True, probe_started_at_s=now_s)


def _probe_lost(state: BreakerState, now_s: float, policy: BreakerPolicy) -> bool:
    if policy.probe_timeout_s is None or state.probe_started_at_s is None:
        return False
    return now_s - state.probe_started_at_s >= policy.probe_timeout_s


def _seconds(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"breaker {key} must be a number or null, got {value!r}")
    return float(value)
