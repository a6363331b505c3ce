"""tasks/policy/scaling.py: the seed's triggers, limits, steps, cooldown and idle shutdown, with
the clock passed in; the latency window and its quantile; the config section that feeds it."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.config_file import ConfigFile
from tasks.errors import ConfigError
from tasks.policy.scaling import (
    LATENCY_BUCKETS_S,
    CallWindow,
    Measurements,
    ScalingConfig,
    WindowStats,
    bucket_index,
    decide,
    merge_windows,
    quantile,
    scale_up_target,
)

CFG = ScalingConfig()  # the seed's numbers
NOW = 10_000.0
QUIET = Measurements(cpu_samples=((NOW - 400, 20.0), (NOW, 20.0)), memory_percent=40.0)


def hist(*durations: float) -> tuple[int, ...]:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for d in durations:
        counts[bucket_index(d)] += 1
    return tuple(counts)


FAST100 = replace(QUIET, calls=100, latency_buckets=hist(*[0.1] * 100))


@pytest.mark.parametrize(
    ("name", "m", "instances", "last", "direction", "to", "code"),
    [
        ("quiet cluster holds", QUIET, 3, None, "hold", 3, "steady"),
        ("queue depth 101 > 100: up 50 %", replace(QUIET, queue_depth=101), 2, None, "up", 3, "triggers"),
        ("queue depth exactly 100 holds", replace(QUIET, queue_depth=100), 2, None, "hold", 2, "steady"),
        ("up 50 % rounds up: 3 -> 5", replace(QUIET, queue_depth=500), 3, None, "up", 5, "triggers"),
        ("up from 1 adds 1", replace(QUIET, queue_depth=500), 1, None, "up", 2, "triggers"),
        ("up is capped at max", replace(QUIET, queue_depth=500), 8, None, "up", 10, "triggers"),
        ("at max holds", replace(QUIET, queue_depth=500), 10, None, "hold", 10, "at-max"),
        ("memory 81 % > 80", replace(QUIET, memory_percent=81.0), 2, None, "up", 3, "triggers"),
        (
            "CPU above 70 for 5 minutes",
            replace(QUIET, cpu_samples=((NOW - 310, 90.0), (NOW - 150, 75.0), (NOW, 71.0))),
            2, None, "up", 3, "triggers",
        ),
        (
            "CPU above 70 for only 4 minutes holds",
            replace(QUIET, cpu_samples=((NOW - 240, 90.0), (NOW, 95.0))),
            2, None, "hold", 2, "steady",
        ),
        (
            "CPU dipped once within the 5 minutes holds",
            replace(QUIET, cpu_samples=((NOW - 310, 90.0), (NOW - 100, 60.0), (NOW, 95.0))),
            2, None, "hold", 2, "steady",
        ),
        (
            "p95 above 5 s",
            replace(QUIET, calls=20, latency_buckets=hist(*([0.1] * 18 + [9.0] * 2))),
            2, None, "up", 3, "triggers",
        ),
        (
            "p95 at 5 s or less holds",
            replace(QUIET, calls=20, latency_buckets=hist(*([0.1] * 19 + [9.0]))),
            2, None, "hold", 2, "steady",
        ),
        (
            "slow calls below minCalls do not count",
            replace(QUIET, calls=5, latency_buckets=hist(*[9.0] * 5)),
            2, None, "hold", 2, "steady",
        ),
        ("error rate 2 % > 1", replace(FAST100, errors=2), 2, None, "up", 3, "triggers"),
        ("error rate 1 % holds", replace(FAST100, errors=1), 2, None, "hold", 2, "steady"),
        ("cooldown holds a trigger", replace(QUIET, queue_depth=500), 2, NOW - 299, "hold", 2, "cooldown"),
        ("cooldown over: acts", replace(QUIET, queue_depth=500), 2, NOW - 300, "up", 3, "triggers"),
        ("below min: up to min, even in cooldown", QUIET, 0, NOW - 1, "up", 1, "below-min"),
        ("above max: down to max, even in cooldown", QUIET, 12, NOW - 1, "down", 10, "above-max"),
        ("idle past the timeout: down by 1", replace(QUIET, idle={"w1": 301.0, "w2": 400.0}), 3, None,
         "down", 2, "idle"),
        ("idle not long enough holds", replace(QUIET, idle={"w1": 299.0}), 3, None, "hold", 3, "steady"),
        ("idle at min holds", replace(QUIET, idle={"w1": 900.0}), 1, None, "hold", 1, "at-min"),
        ("idle but in cooldown holds", replace(QUIET, idle={"w1": 900.0}), 3, NOW - 10,
         "hold", 3, "cooldown"),
        ("a trigger wins over idle", replace(QUIET, queue_depth=500, idle={"w1": 900.0}), 2, None,
         "up", 3, "triggers"),
    ],
)  # fmt: skip
def test_decision_table(
    name: str, m: Measurements, instances: int, last: float | None, direction: str, to: int, code: str
) -> None:
    d = decide(m, instances=instances, last_change_at=last, config=CFG, now=NOW)
    assert (d.direction, d.to_n, d.code) == (direction, to, code), f"{name}: {d.reason}"
    assert d.from_n == instances
    assert d.reason


def test_idle_removes_the_longest_idle_first_and_names_it() -> None:
    m = replace(QUIET, idle={"w1": 301.0, "w2": 900.0, "w3": 10.0})
    d = decide(m, instances=3, last_change_at=None, config=CFG, now=NOW)
    assert d.stop == ("w2",)
    assert "w2" in d.reason
    step2 = replace(CFG, scale_down_step=5)
    d2 = decide(m, instances=3, last_change_at=None, config=step2, now=NOW)
    assert (d2.to_n, d2.stop) == (1, ("w2", "w1")), "a bigger step, but never below min and only idle ones"


def test_a_busy_worker_is_never_chosen() -> None:
    """The shell lists only workers holding nothing; one not listed is never in `stop`."""
    d = decide(replace(QUIET, idle={"w1": 900.0}), instances=5, last_change_at=None, config=CFG, now=NOW)
    assert set(d.stop) <= {"w1"}


def test_decision_json_carries_every_trigger() -> None:
    d = decide(replace(QUIET, queue_depth=150), instances=2, last_change_at=None, config=CFG, now=NOW)
    out = d.to_json(at=NOW, provider="local")
    assert json.loads(json.dumps(out)) == out
    assert {"at", "direction", "from", "to", "reason", "provider", "triggers"} <= set(out)
    assert out["triggers"]["queue_depth"] == {"value": 150.0, "threshold": 100, "fired": True}
    assert out["triggers"]["memory"]["fired"] is False
    assert "queue_depth 150 > 100" in out["reason"]


@pytest.mark.parametrize(
    ("n", "pct", "up"), [(1, 50, 2), (2, 50, 3), (3, 50, 5), (4, 50, 6), (0, 50, 1), (5, 10, 6)]
)
def test_scale_up_target(n: int, pct: float, up: int) -> None:
    assert scale_up_target(n, replace(CFG, scale_up_percent=pct, max_instances=100)) == up


def test_quantile_interpolates_inside_the_bucket() -> None:
    assert quantile((), 0.95) is None
    assert quantile(hist(*[0.3] * 100), 0.95) == pytest.approx(0.25 + 0.25 * 0.95)
    assert quantile(hist(*[1000.0] * 3), 0.5) == LATENCY_BUCKETS_S[-1]
    # a threshold that is a bucket bound is decided exactly: 95 fast + 5 slow -> p95 within (<=) 5 s
    assert quantile(hist(*([0.1] * 95 + [4.9] * 5)), 0.95) <= 5.0  # type: ignore[operator]


def test_call_window_rolls_and_merges() -> None:
    w = CallWindow(window_s=10)
    w.record(100.0, 0.02, ok=True)
    w.record(100.5, 7.0, ok=False)
    w.record(105.0, 0.3, ok=True)
    s = w.stats(106.0)
    assert (s.calls, s.errors, sum(s.buckets)) == (3, 1, 3)
    assert s.buckets[bucket_index(7.0)] == 1
    later = w.stats(110.5)  # the calls of second 100 left the window
    assert (later.calls, later.errors) == (1, 0)
    assert w.stats(200.0).calls == 0
    calls, errors, buckets = merge_windows([s, later, WindowStats(10, 0, 0, ())])
    assert (calls, errors, sum(buckets)) == (4, 1, 4)


def test_config_section_camel_case_and_validated() -> None:
    cfg = ConfigFile.model_validate(
        {
            "servers": {"time": {"command": "x"}},
            "autoscaling": {
                "enabled": True,
                "provider": "kubernetes",
                "minInstances": 2,
                "maxInstances": 4,
                "cooldownS": 60,
                "triggers": {"p95LatencyS": 2.5, "errorRatePercent": 5, "cpuSustainS": 0},
                "kubernetes": {"namespace": "mcp", "deployment": "w"},
                "local": {"servers": ["time"]},
            },
        }
    )
    sc = ScalingConfig.from_section(cfg.autoscaling)
    assert (sc.min_instances, sc.max_instances, sc.cooldown_s, sc.p95_latency_s, sc.error_rate_percent) == (
        2, 4, 60, 2.5, 5,
    )  # fmt: skip
    assert ScalingConfig.from_section(ConfigFile().autoscaling) == ScalingConfig(), "defaults are the seed's"


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"minInstances": 5, "maxInstances": 2}, "minInstances (5) must not exceed maxInstances (2)"),
        ({"cooldownS": -1}, "autoscaling.cooldownS"),
        ({"triggers": {"cpuPercent": 120}}, "autoscaling.triggers.cpuPercent"),
        ({"triggers": {"queueDepht": 5}}, "autoscaling.triggers.queueDepht"),
        ({"provider": "nomad"}, "autoscaling.provider"),
        ({"local": {"servers": ["nope"]}}, "autoscaling.local.servers: nope not configured"),
        ({"intervalS": 0}, "autoscaling.intervalS"),
    ],
)
def test_bad_config_names_the_field(tmp_path: object, autoscaling: dict[str, object], field: str) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.json"
    path.write_text(json.dumps({"servers": {"time": {"command": "x"}}, "autoscaling": autoscaling}))
    from tasks.config_file import load_config_file

    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert field in str(err.value)


def test_autoscale_is_a_reserved_schedule_name() -> None:
    with pytest.raises(ValueError, match="autoscale"):
        ConfigFile.model_validate(
            {
                "servers": {"t": {"command": "x"}},
                "schedules": {"autoscale": {"server": "t", "tool": "a", "every": 5}},
            }
        )


def test_beat_schedule_has_the_entry_only_when_enabled() -> None:
    from beat.schedule import beat_schedule

    assert "autoscale" not in beat_schedule(ConfigFile())
    on = ConfigFile.model_validate({"autoscaling": {"enabled": True, "intervalS": 7}})
    assert beat_schedule(on)["autoscale"] == {"task": "agentful.autoscale", "schedule": 7.0}


# -- properties ----------------------------------------------------------------------------------

measurements = st.builds(
    Measurements,
    cpu_samples=st.just(()),
    memory_percent=st.one_of(st.none(), st.floats(0, 100)),
    queue_depth=st.integers(0, 1000),
    calls=st.just(0),
    errors=st.just(0),
    latency_buckets=st.just(()),
    idle=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 2000), max_size=4),
)
configs = st.builds(
    ScalingConfig,
    min_instances=st.integers(0, 5),
    max_instances=st.integers(5, 12),
    scale_up_percent=st.floats(1, 300),
    scale_down_step=st.integers(1, 4),
    cooldown_s=st.floats(0, 600),
    idle_timeout_s=st.floats(1, 900),
)


@settings(max_examples=300, deadline=None)
@given(
    config=configs,
    start=st.integers(0, 12),
    steps=st.lists(st.tuples(st.floats(0, 400), measurements), max_size=40),
)
def test_never_outside_limits_and_never_two_changes_within_the_cooldown(
    config: ScalingConfig, start: int, steps: list[tuple[float, Measurements]]
) -> None:
    """Applying each decision as a provider would: once inside min..max it stays inside, and two
    changes made inside the limits are at least a cooldown apart."""
    instances, now, last_change = start, 0.0, None
    changes: list[float] = []
    for dt, m in steps:
        now += dt
        d = decide(m, instances=instances, last_change_at=last_change, config=config, now=now)
        assert config.min_instances <= d.to_n <= config.max_instances or (
            d.direction == "hold" and d.to_n == instances
        )
        inside = config.min_instances <= instances <= config.max_instances
        if inside:
            assert config.min_instances <= d.to_n <= config.max_instances
        if d.changes:
            if inside:
                changes.append(now)
            if d.direction == "up":
                assert d.to_n > instances
            else:
                assert instances - d.to_n <= max(config.scale_down_step, instances - config.max_instances)
            instances, last_change = d.to_n, now
    for a, b in itertools.pairwise(changes):
        assert b - a >= config.cooldown_s


@given(n=st.integers(0, 1000), pct=st.floats(1, 500))
def test_scale_up_is_ceil_of_the_percentage(n: int, pct: float) -> None:
    cfg = replace(CFG, scale_up_percent=pct, max_instances=10**6)
    assert scale_up_target(n, cfg) == n + max(1, math.ceil(n * pct / 100 - 1e-9))
