"""A real `celery beat` runs the config file's schedules against the test cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONFIG, ROOT

pytestmark = pytest.mark.integration

# A time zone no other test asks for, so the calls counted are beat's.
ZONE = "Pacific/Chatham"


def _beat_calls(since: datetime) -> list[dict[str, Any]]:
    """Results of `time get_current_time {"timezone": ZONE}` that finished after `since`."""
    from tasks import app

    client = app.backend.client
    keys = list(client.scan_iter(match="celery-task-meta-*", count=1000))
    metas = [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
    return [
        m
        for m in metas
        if m.get("name") == "agentful.call_tool"
        and m.get("args") == ["time", "get_current_time", {"timezone": ZONE}]
        and m.get("status") == "SUCCESS"
        and _utc(datetime.fromisoformat(m["date_done"])) >= since
    ]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_beat_submits_a_configured_schedule(cluster: Any, tmp_path: Path) -> None:
    from workers.launcher import wait_for

    schedules = {
        "chatham-clock": {
            "server": "time",
            "tool": "get_current_time",
            "arguments": {"timezone": ZONE},
            "every": 1,
        }
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "schedules": schedules}))
    since = datetime.now(UTC)
    log = tmp_path / "beat.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "beat",
        "-s",
        str(tmp_path / "schedule"),
        "-l",
        "INFO",
    ]
    with log.open("wb") as out:
        beat = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "AGENTFUL_CONFIG": str(config)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ran = wait_for(lambda: len(_beat_calls(since)) >= 2, 60, interval_s=0.25)
        assert ran, f"beat's schedule did not run twice within 60 s: {log.read_text()[-3000:]}"
    finally:
        beat.terminate()
        try:
            beat.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(beat.pid, signal.SIGKILL)
            beat.wait(timeout=10)
    calls = _beat_calls(since)
    assert all(c["result"]["is_error"] is False for c in calls)
    assert all(c["result"]["structured_content"]["timezone"] == ZONE for c in calls)
    assert {c["result"]["worker"].split("@")[0] for c in calls} <= {"t1", "t2"}
    text = log.read_text()
    assert "Scheduler: Sending due task chatham-clock (agentful.call_tool)" in text, text[-3000:]
