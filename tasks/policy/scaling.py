"""The autoscaling decision: plain data in (measurements, instances, last change, config, now),
a decision with its reasons out. No Redis, no Celery, no clock: beat/autoscale.py measures,
calls `decide`, and applies the result through a provider.

The seed's rules: scale up when any trigger fires (CPU above 70 % for 5 minutes, memory above
80 %, queue depth above 100, p95 latency above 5 s, error rate above 1 %) by 50 % rounded up;
scale down by 1, and only an instance that has been idle (nothing in flight, nothing reserved)
for `idleTimeoutS`, so a removed instance never holds calls; never outside min..max; no change
within the cooldown of the last one (except to come back inside min..max).

Also here, because workers and beat must agree on it: the latency histogram's buckets and the
rolling window a worker keeps of its calls (`CallWindow`), which its heartbeat carries.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Upper bounds (seconds) of the latency histogram; a last bucket counts everything slower.
# A trigger threshold that is one of these bounds is decided exactly (5 s is).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class ScalingConfig:
    """The numbers of the config file's `autoscaling` section, in seconds and fractions."""

    min_instances: int = 1
    max_instances: int = 10
    scale_up_percent: float = 50.0
    scale_down_step: int = 1
    cooldown_s: float = 300.0
    idle_timeout_s: float = 300.0
    cpu_percent: float = 70.0
    cpu_sustain_s: float = 300.0
    memory_percent: float = 80.0
    queue_depth: int = 100
    p95_latency_s: float = 5.0
    error_rate_percent: float = 1.0
    min_calls: int = 20

    @classmethod
    def from_section(cls, section: Any) -> ScalingConfig:
        """From `tasks.config_file.AutoscalingSection`."""
        t = section.triggers
        return cls(
            min_instances=section.min_instances,
            max_instances=section.max_instances,
            scale_up_percent=section.scale_up_percent,
            scale_down_step=section.scale_down_step,
            cooldown_s=section.cooldown_s,
            idle_timeout_s=section.idle_timeout_s,
            cpu_percent=t.cpu_percent,
            cpu_sustain_s=t.cpu_sustain_s,
            memory_percent=t.memory_percent,
            queue_depth=t.queue_depth,
            p95_latency_s=t.p95_latency_s,
            error_rate_percent=t.error_rate_percent,
            min_calls=t.min_calls,
        )


@dataclass(frozen=True)
class Measurements:
    """What the cluster looks like now.

    `cpu_samples`: (time, mean CPU % of the workers) readings, oldest first, covering at least
    the sustain period when there is one. `latency_buckets`: counts per `LATENCY_BUCKETS_S`
    bound plus one for slower calls, over the window. `idle`: instance -> seconds it has held
    nothing (only instances holding nothing appear).
    """

    cpu_samples: Sequence[tuple[float, float]] = ()
    memory_percent: float | None = None
    queue_depth: int = 0
    calls: int = 0
    errors: int = 0
    latency_buckets: Sequence[int] = ()
    idle: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    value: float | None
    threshold: float
    fired: bool

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None else round(self.value, 4)
        return {"value": value, "threshold": self.threshold, "fired": self.fired}


@dataclass(frozen=True)
class Decision:
    direction: Direction
    from_n: int
    to_n: int
    code: str  # what kind of decision: triggers, idle, cooldown, below-min, above-max, at-max, steady
    reason: str
    triggers: Mapping[str, Trigger] = field(default_factory=dict)
    stop: tuple[str, ...] = ()  # instances to remove first, longest idle first

    @property
    def changes(self) -> bool:
        return self.to_n != self.from_n

    def to_json(self, *, at: float, provider: str) -> dict[str, Any]:
        return {
            "at": round(at, 3),
            "direction": self.direction,
            "from": self.from_n,
            "to": self.to_n,
            "reason": self.reason,
            "provider": provider,
            "triggers": {k: t.to_json() for k, t in self.triggers.items()},
            "code": self.code,
            "stop": list(self.stop),
        }


def quantile(buckets: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> float | None:
    """The q-quantile of a histogram, interpolated linearly inside its bucket (as Prometheus'
    histogram_quantile). None without observations; the last finite bound if it falls beyond."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else bounds[i - 1]
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return float(bounds[-1])


def bucket_index(seconds: float, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> int:
    for i, bound in enumerate(bounds):
        if seconds <= bound:
            return i
    return len(bounds)


def cpu_sustained(
    samples: Sequence[tuple[float, float]], threshold: float, sustain_s: float, now: float
) -> Trigger:
    """Fired when every reading since `now - sustain_s` (and the last one before it) is above."""
    if not samples:
        return Trigger(None, threshold, False)
    start = now - sustain_s
    before = [t for t, _ in samples if t <= start]
    latest = samples[-1][1]
    if not before:  # not watched for long enough yet
        return Trigger(latest, threshold, False)
    window = [c for t, c in samples if t >= max(before)]
    low = min(window)
    return Trigger(low, threshold, low > threshold)


def triggers(m: Measurements, config: ScalingConfig, now: float) -> dict[str, Trigger]:
    """Every trigger with its value and threshold, fired or not."""
    p95 = quantile(m.latency_buckets, 0.95) if m.calls >= config.min_calls else None
    error_rate = 100.0 * m.errors / m.calls if m.calls >= config.min_calls and m.calls else None
    mem = m.memory_percent
    return {
        "cpu": cpu_sustained(m.cpu_samples, config.cpu_percent, config.cpu_sustain_s, now),
        "memory": Trigger(mem, config.memory_percent, mem is not None and mem > config.memory_percent),
        "queue_depth": Trigger(float(m.queue_depth), config.queue_depth, m.queue_depth > config.queue_depth),
        "p95_latency_s": Trigger(p95, config.p95_latency_s, p95 is not None and p95 > config.p95_latency_s),
        "error_rate_percent": Trigger(
            error_rate,
            config.error_rate_percent,
            error_rate is not None and error_rate > config.error_rate_percent,
        ),
    }


def scale_up_target(instances: int, config: ScalingConfig) -> int:
    """Up by `scale_up_percent` of the current instances, rounded up, at least one, at most max."""
    step = max(1, math.ceil(instances * config.scale_up_percent / 100 - 1e-9))
    return min(config.max_instances, instances + step)


def _idle_order(idle: Mapping[str, float], at_least_s: float) -> list[str]:
    """Instances idle at least `at_least_s`, longest idle first (ties by name: deterministic)."""
    return [n for n, s in sorted(idle.items(), key=lambda kv: (-kv[1], kv[0])) if s >= at_least_s]


def decide(
    m: Measurements,
    *,
    instances: int,
    last_change_at: float | None,
    config: ScalingConfig,
    now: float,
) -> Decision:
    """The decision for this evaluation."""
    fired = triggers(m, config, now)
    names = [k for k, t in fired.items() if t.fired]
    lo, hi = config.min_instances, config.max_instances

    def out(direction: Direction, to: int, code: str, reason: str, stop: Sequence[str] = ()) -> Decision:
        return Decision(direction, instances, to, code, reason, fired, tuple(stop))

    if instances < lo:
        return out("up", lo, "below-min", f"{instances} instances, below the minimum {lo}")
    if instances > hi:
        stop = _idle_order(m.idle, 0.0)[: instances - hi]
        return out("down", hi, "above-max", f"{instances} instances, above the maximum {hi}", stop)
    if last_change_at is not None and now - last_change_at < config.cooldown_s:
        left = config.cooldown_s - (now - last_change_at)
        why = f"; would act on {', '.join(names)}" if names else ""
        return out("hold", instances, "cooldown", f"cooldown: {left:.0f}s left{why}")
    if names:
        target = scale_up_target(instances, config)
        detail = ", ".join(_describe(k, fired[k]) for k in names)
        if target <= instances:
            return out("hold", instances, "at-max", f"at the maximum {hi}: {detail}")
        return out("up", target, "triggers", detail)
    idle = _idle_order(m.idle, config.idle_timeout_s)
    if idle and instances > lo:
        stop = idle[: min(config.scale_down_step, instances - lo)]
        longest = m.idle[stop[0]]
        return out(
            "down",
            instances - len(stop),
            "idle",
            f"{', '.join(stop)} idle for {longest:.0f}s or more (idle timeout {config.idle_timeout_s:g}s)",
            stop,
        )
    if idle:
        return out("hold", instances, "at-min", f"{len(idle)} idle, at the minimum {lo}")
    return out("hold", instances, "steady", "no trigger fired, no instance idle long enough")


def _describe(name: str, t: Trigger) -> str:
    value = "?" if t.value is None else f"{t.value:.4g}"
    return f"{name} {value} > {t.threshold:g}"


# -- the worker's side: a rolling window of its calls -------------------------------------------


@dataclass(frozen=True)
class WindowStats:
    """A worker's calls over its last `window_s`: count, failures, latency histogram."""

    window_s: float
    calls: int
    errors: int
    buckets: tuple[int, ...]


class CallWindow:
    """Finished calls over the last `window_s`, in one-second slots (bounded memory: one slot
    per second of the window, each a histogram). Thread-safe; the clock is passed in."""

    def __init__(self, window_s: float, slot_s: float = 1.0) -> None:
        self.window_s = window_s
        self.slot_s = slot_s
        self._slots: dict[int, list[int]] = {}  # slot -> [calls, errors, *buckets]
        self._lock = threading.Lock()

    def record(self, now: float, duration_s: float, ok: bool) -> None:
        slot = int(now // self.slot_s)
        with self._lock:
            row = self._slots.get(slot)
            if row is None:
                row = self._slots[slot] = [0] * (3 + len(LATENCY_BUCKETS_S))
                self._expire(now)
            row[0] += 1
            row[1] += 0 if ok else 1
            row[2 + bucket_index(duration_s)] += 1

    def _expire(self, now: float) -> None:
        oldest = int((now - self.window_s) // self.slot_s)
        for slot in [s for s in self._slots if s <= oldest]:
            del self._slots[slot]

    def stats(self, now: float) -> WindowStats:
        with self._lock:
            self._expire(now)
            rows = list(self._slots.values())
        calls = sum(r[0] for r in rows)
        errors = sum(r[1] for r in rows)
        buckets = tuple(sum(r[2 + i] for r in rows) for i in range(len(LATENCY_BUCKETS_S) + 1))
        return WindowStats(self.window_s, calls, errors, buckets)


def merge_windows(windows: Sequence[WindowStats]) -> tuple[int, int, tuple[int, ...]]:
    """Calls, errors and histogram of several workers' windows together."""
    size = len(LATENCY_BUCKETS_S) + 1
    buckets = [0] * size
    for w in windows:
        for i, n in enumerate(w.buckets[:size]):
            buckets[i] += n
    return sum(w.calls for w in windows), sum(w.errors for w in windows), tuple(buckets)
