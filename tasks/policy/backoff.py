"""Retry backoff: exponential delay, capped, with jitter; and the retry policy from the config.

Jitter style: the delay is drawn uniformly from `[d * (1 - jitter), d]`, where `d` is the capped
exponential delay. `jitter=0` gives exactly `d`; `jitter=0.5` is AWS's "equal jitter" (half fixed,
half random); `jitter=1` is "full jitter" (`[0, d]`). The upper bound `d` never exceeds `max_s`
and never decreases with the attempt number, so a retry is never later than the cap.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tasks.config_file import RetrySection


def backoff_s(attempt: int, *, initial_s: float, factor: float, max_s: float) -> float:
    """The un-jittered delay before retry number `attempt` (1: the first retry), in seconds.

    `initial_s * factor ** (attempt - 1)`, capped at `max_s`; computed without overflow for any
    attempt (a power past the float range is the cap, not an error).
    """
    _check(attempt=attempt, initial_s=initial_s, factor=factor, max_s=max_s, jitter=0.0)
    if initial_s == 0:
        return 0.0
    if initial_s >= max_s:
        return float(max_s)
    try:
        grown = initial_s * factor ** (attempt - 1)
    except OverflowError:  # factor ** n past the float range: far beyond any cap
        return float(max_s)
    return float(min(max_s, grown))


def retry_delay_s(
    attempt: int, *, initial_s: float, factor: float, max_s: float, jitter: float, rng: random.Random
) -> float:
    """The jittered delay before retry number `attempt`, uniform in `[d * (1 - jitter), d]`.

    `d` is `backoff_s(...)`; `jitter` is in [0, 1]. Draws exactly one `rng.random()`, so a seeded
    generator gives a reproducible sequence. The result is always in `[0, max_s]`.
    """
    _check(attempt=attempt, initial_s=initial_s, factor=factor, max_s=max_s, jitter=jitter)
    ceiling = backoff_s(attempt, initial_s=initial_s, factor=factor, max_s=max_s)
    return ceiling - ceiling * jitter * rng.random()


def _check(*, attempt: int, initial_s: float, factor: float, max_s: float, jitter: float) -> None:
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt}")
    if not (math.isfinite(initial_s) and initial_s >= 0):
        raise ValueError(f"initial_s must be a finite number >= 0, got {initial_s}")
    if not (math.isfinite(max_s) and max_s >= 0):
        raise ValueError(f"max_s must be a finite number >= 0, got {max_s}")
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a transiently failed call is tried again.

    `max_attempts` counts every attempt, the first included (the seed's `maxAttempts`): with 3, a
    call runs at most three times, i.e. is retried at most twice.
    """

    max_attempts: int = 3
    factor: float = 2.0
    initial_s: float = 1.0
    max_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        _check(attempt=1, initial_s=self.initial_s, factor=self.factor, max_s=self.max_s, jitter=self.jitter)

    @classmethod
    def from_config(cls, retry: RetrySection, *, jitter: float = 0.5) -> RetryPolicy:
        """From the config file's `mcp.client.retry` section (its delays are in ms)."""
        return cls(
            max_attempts=retry.max_attempts,
            factor=retry.backoff_multiplier,
            initial_s=retry.initial_delay / 1000,
            max_s=retry.max_delay / 1000,
            jitter=jitter,
        )

    def should_retry(self, attempts_done: int) -> bool:
        """True while another attempt is allowed after `attempts_done` attempts have failed."""
        return attempts_done < self.max_attempts

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay before retry number `attempt` (1: the first retry)."""
        return retry_delay_s(
            attempt,
            initial_s=self.initial_s,
            factor=self.factor,
            max_s=self.max_s,
            jitter=self.jitter,
            rng=rng,
        )
