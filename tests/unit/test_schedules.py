"""The config file's `schedules` and beat's schedule built from them: pure, no broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab

from beat.schedule import beat_schedule
from tasks.config_file import ConfigFile, load_config_file, parse_crontab
from tasks.errors import ConfigError

SERVERS = {"git": {"command": "x"}, "time": {"command": "y"}}


def load(tmp_path: Path, schedules: Any, servers: Any = None) -> ConfigFile:
    path = tmp_path / "agentful.json"
    path.write_text(json.dumps({"servers": SERVERS if servers is None else servers, "schedules": schedules}))
    return load_config_file(path)


def test_every_and_crontab_entries_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {
            "nightly-log": {
                "server": "git",
                "tool": "git_log",
                "arguments": {"repo_path": "/srv/repo"},
                "crontab": "0 3 * * *",
            },
            "clock": {"server": "time", "tool": "get_current_time", "every": 1.5, "priority": 9},
        },
    )

    nightly, clock = cfg.schedules["nightly-log"], cfg.schedules["clock"]
    assert (nightly.server, nightly.tool, nightly.arguments) == ("git", "git_log", {"repo_path": "/srv/repo"})
    assert (nightly.crontab, nightly.every, nightly.priority) == ("0 3 * * *", None, None)
    assert (clock.every, clock.crontab, clock.arguments, clock.priority) == (1.5, None, {}, 9)


def test_no_schedules_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, {}).schedules == {}
    assert ConfigFile().schedules == {}


def test_beat_schedule_has_one_call_tool_entry_per_schedule_and_the_health_check(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {
            "nightly-log": {
                "server": "git",
                "tool": "git_log",
                "arguments": {"repo_path": "/srv/repo"},
                "crontab": "0 3 * * *",
            },
            "clock": {
                "server": "time",
                "tool": "get_current_time",
                "arguments": {"timezone": "UTC"},
                "every": 60,
            },
            "urgent-clock": {"server": "time", "tool": "get_current_time", "every": 5, "priority": 0},
        },
    )

    entries = beat_schedule(cfg)

    assert set(entries) == {"health-check", "nightly-log", "clock", "urgent-clock"}
    assert entries["health-check"]["task"] == "agentful.health_check"
    nightly = entries["nightly-log"]
    assert nightly["task"] == "agentful.call_tool"
    assert nightly["args"] == ["git", "git_log", {"repo_path": "/srv/repo"}]
    assert nightly["schedule"] == crontab(minute="0", hour="3")
    assert "options" not in nightly  # Celery's defaults: no priority, no expiry
    clock = entries["clock"]
    assert clock == {
        "task": "agentful.call_tool",
        "schedule": 60.0,
        "args": ["time", "get_current_time", {"timezone": "UTC"}],
    }
    assert entries["urgent-clock"]["args"] == ["time", "get_current_time", {}]
    assert entries["urgent-clock"]["options"] == {"priority": 0}


def test_beat_schedule_without_schedules_is_the_health_check_alone() -> None:
    assert list(beat_schedule(ConfigFile())) == ["health-check"]


def test_an_entrys_arguments_are_its_own_copy(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"c": {"server": "time", "tool": "t", "arguments": {"a": 1}, "every": 1}})

    beat_schedule(cfg)["c"]["args"][2]["a"] = 2

    assert cfg.schedules["c"].arguments == {"a": 1}


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ("0 3 * * *", {"minute": "0", "hour": "3"}),
        ("*/15 * * * *", {"minute": "*/15"}),
        ("30 2 1 */3 *", {"minute": "30", "hour": "2", "day_of_month": "1", "month_of_year": "*/3"}),
        ("0 9 * * mon-fri", {"minute": "0", "hour": "9", "day_of_week": "mon-fri"}),
        ("5,35 8-18 * * 1-5", {"minute": "5,35", "hour": "8-18", "day_of_week": "1-5"}),
        ("  0   3 * *  * ", {"minute": "0", "hour": "3"}),  # any run of spaces separates
    ],
)
def test_crontab_lines_are_minute_hour_day_month_weekday(line: str, fields: dict[str, str]) -> None:
    assert parse_crontab(line) == crontab(**fields)


BAD_SCHEDULES: list[tuple[str, Any, list[str]]] = [
    # (id, the schedules section, words the error must contain)
    (
        "unknown-server",
        {"n": {"server": "gti", "tool": "git_log", "every": 5}},
        ["schedules.n.server", "'gti'", "git, time"],
    ),
    ("neither-timing", {"n": {"server": "git", "tool": "git_log"}}, ["schedules.n", "exactly one"]),
    (
        "both-timings",
        {"n": {"server": "git", "tool": "git_log", "every": 5, "crontab": "* * * * *"}},
        ["schedules.n", "exactly one"],
    ),
    (
        "zero-every",
        {"n": {"server": "git", "tool": "t", "every": 0}},
        ["schedules.n.every", "greater than 0"],
    ),
    ("negative-every", {"n": {"server": "git", "tool": "t", "every": -5}}, ["schedules.n.every"]),
    ("text-every", {"n": {"server": "git", "tool": "t", "every": "daily"}}, ["schedules.n.every"]),
    (
        "four-fields",
        {"n": {"server": "git", "tool": "t", "crontab": "0 3 * *"}},
        ["schedules.n.crontab", "5 fields", "got 4"],
    ),
    (
        "six-fields",
        {"n": {"server": "git", "tool": "t", "crontab": "0 0 3 * * *"}},
        ["schedules.n.crontab", "5 fields", "got 6"],
    ),
    (
        "minute-out-of-range",
        {"n": {"server": "git", "tool": "t", "crontab": "61 3 * * *"}},
        ["schedules.n.crontab", "minute '61'", "61 > 59"],
    ),
    (
        "hour-out-of-range",
        {"n": {"server": "git", "tool": "t", "crontab": "0 24 * * *"}},
        ["schedules.n.crontab", "hour '24'"],
    ),
    (
        "day-of-month-zero",
        {"n": {"server": "git", "tool": "t", "crontab": "0 3 0 * *"}},
        ["schedules.n.crontab", "day_of_month '0'"],
    ),
    (
        "month-13",
        {"n": {"server": "git", "tool": "t", "crontab": "0 3 * 13 *"}},
        ["schedules.n.crontab", "month_of_year '13'"],
    ),
    (
        "weekday-word",
        {"n": {"server": "git", "tool": "t", "crontab": "0 3 * * someday"}},
        ["schedules.n.crontab", "day_of_week 'someday'"],
    ),
    (
        "empty-list-item",
        {"n": {"server": "git", "tool": "t", "crontab": "0 1,,2 * * *"}},
        ["schedules.n.crontab", "hour '1,,2'"],
    ),
    (
        "zero-step",
        {"n": {"server": "git", "tool": "t", "crontab": "*/0 * * * *"}},
        ["schedules.n.crontab", "minute '*/0'"],
    ),
    (
        "arguments-not-an-object",
        {"n": {"server": "git", "tool": "t", "arguments": ["x"], "every": 1}},
        ["schedules.n.arguments", "dictionary"],
    ),
    ("empty-tool", {"n": {"server": "git", "tool": "", "every": 1}}, ["schedules.n.tool"]),
    ("no-tool", {"n": {"server": "git", "every": 1}}, ["schedules.n.tool", "Field required"]),
    ("no-server", {"n": {"tool": "t", "every": 1}}, ["schedules.n.server", "Field required"]),
    (
        "priority-10",
        {"n": {"server": "git", "tool": "t", "every": 1, "priority": 10}},
        ["schedules.n.priority"],
    ),
    ("typo", {"n": {"server": "git", "tool": "t", "evrey": 1}}, ["schedules.n.evrey", "Extra inputs"]),
    ("reserved-name", {"health-check": {"server": "git", "tool": "t", "every": 1}}, ["'health-check'"]),
    ("not-an-object", {"n": 5}, ["schedules.n"]),
]


@pytest.mark.parametrize(
    ("schedules", "words"), [c[1:] for c in BAD_SCHEDULES], ids=[c[0] for c in BAD_SCHEDULES]
)
def test_a_bad_schedule_fails_at_load_naming_the_field(
    tmp_path: Path, schedules: Any, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, schedules)

    message = str(info.value)
    assert str(tmp_path / "agentful.json") in message
    for word in words:
        assert word in message, message


def test_a_schedule_needs_its_server_configured_even_with_no_servers(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"schedules\.n\.server: 'time' is not a configured server \(configured: none\)"
    ):
        load(tmp_path, {"n": {"server": "time", "tool": "t", "every": 1}}, servers={})
