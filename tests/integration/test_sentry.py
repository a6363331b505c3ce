"""Sentry through the real sentry-sdk, from a real worker, to a local HTTP endpoint standing in for
Sentry's ingestion (DSN http://public@127.0.0.1:PORT/1): a failing call arrives as an event, and
no secret from the call's arguments or the error's text is in it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DATA_DIR, SERVERS
from tests.integration.telemetry_env import Recorder, recorder

pytestmark = pytest.mark.integration
NODE = "tsentry@%h"
PASSWORD = "hunter2-s3cr3t"
TOKEN = "sk-live-7f3a9c1e5b"
# A server that dies at start and says, on stderr, where it could not connect, credentials included.
LEAKY = {
    "command": sys.executable,
    "args": [
        "-c",
        f"import sys; sys.exit('cannot reach redis://admin:{PASSWORD}@10.0.0.9:6379/0 (Bearer {TOKEN})')",
    ],
}


def envelope_items(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """Sentry's envelope: a header line, then item header and payload lines."""
    lines = body.split(b"\n")
    items = []
    i = 1
    while i + 1 < len(lines):
        header = json.loads(lines[i])
        payload = lines[i + 1]
        try:
            items.append((header, json.loads(payload)))
        except json.JSONDecodeError:
            items.append((header, payload))
        i += 2
    return items


@pytest.fixture(scope="module")
def sentry_worker(broker: str) -> Iterator[Recorder]:
    from workers.launcher import WorkerProcess

    config = DATA_DIR / "telemetry-sentry.json"
    config.write_text(
        json.dumps({"mcp": {"client": {"retry": {"maxAttempts": 1}}}, "servers": {**SERVERS, "leaky": LEAKY}})
    )
    with recorder() as ingest:
        env = {
            "AGENTFUL_CONFIG": str(config),
            "AGENTFUL_SENTRY_DSN": f"http://public@127.0.0.1:{ingest.port}/1",
            "AGENTFUL_SENTRY_ENVIRONMENT": "test",
        }
        worker = WorkerProcess(NODE, ["leaky"], env=env, log_path=DATA_DIR / "logs" / "tsentry.log").start()
        try:
            yield ingest
        finally:
            worker.stop()


def test_a_failing_call_reaches_sentry_without_secrets(sentry_worker: Recorder) -> None:
    from tasks import app
    from workers.launcher import wait_for

    # A raw Celery message (what any producer may send): the caller's checks are not in the way.
    result = app.send_task(
        "agentful.call_tool",
        args=("leaky", "anything", {"api_token": TOKEN, "dsn": f"postgres://u:{PASSWORD}@db/x"}),
        queue="mcp.leaky",
    )
    with pytest.raises(Exception, match="failed to start"):
        result.get(timeout=60)

    def events() -> list[dict[str, Any]]:
        return [
            payload
            for body in sentry_worker.bodies("/api/1/envelope/")
            for header, payload in envelope_items(body)
            if header.get("type") == "event" and isinstance(payload, dict)
        ]

    assert wait_for(
        lambda: any(e.get("tags", {}).get("celery_task_id") == result.id for e in events()), 30
    ), f"no Sentry event for the task; requests: {[p for p, _, _ in sentry_worker.requests]}"
    event = next(e for e in events() if e.get("tags", {}).get("celery_task_id") == result.id)
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "ServerStartError"
    assert "failed to start" in exception["value"] and "[Filtered]" in exception["value"]
    assert event["tags"]["service"] == "agentful-worker"
    assert event["environment"] == "test"
    assert event["extra"]["celery-job"]["task_name"] == "agentful.call_tool"
    everything = b"".join(sentry_worker.bodies("/api/1/"))
    assert PASSWORD.encode() not in everything
    assert TOKEN.encode() not in everything


def test_beats_schedule_reports_as_sentry_cron_monitors(sentry_worker: Recorder) -> None:
    """monitor_beat_tasks: a schedule entry is a Sentry cron monitor. Beat checks in when it
    submits the call (in_progress); the worker that ran it checks in with the outcome (here the
    server fails to start: error). Sentry takes whole minutes only, so this waits up to a minute."""
    import os
    import subprocess

    from workers.launcher import wait_for

    work = DATA_DIR / "tsentry-beat"
    work.mkdir(exist_ok=True)
    config = work / "config.json"
    every_minute = {"server": "leaky", "tool": "anything", "arguments": {}, "crontab": "* * * * *"}
    schedule = {"servers": {"leaky": LEAKY}, "schedules": {"leaky-minutely": every_minute}}
    config.write_text(json.dumps(schedule))
    env = {
        **os.environ,
        "AGENTFUL_CONFIG": str(config),
        "AGENTFUL_DATA_DIR": str(work),
        "AGENTFUL_SENTRY_DSN": f"http://public@127.0.0.1:{sentry_worker.port}/1",
    }
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(work / "schedule"), "-l", "INFO"]
    with (DATA_DIR / "logs" / "tsentry-beat.log").open("ab") as log:
        beat = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:

            def check_ins() -> list[dict[str, Any]]:
                return [
                    payload
                    for body in sentry_worker.bodies("/api/1/envelope/")
                    for header, payload in envelope_items(body)
                    if header.get("type") == "check_in" and isinstance(payload, dict)
                ]

            def statuses() -> set[str]:
                mine = [c for c in check_ins() if c.get("monitor_slug") == "leaky-minutely"]
                return {str(c.get("status")) for c in mine}

            assert wait_for(lambda: {"in_progress", "error"} <= statuses(), 100), f"check-ins: {check_ins()}"
            ids = {c["check_in_id"] for c in check_ins() if c.get("monitor_slug") == "leaky-minutely"}
            assert len(ids) == 1  # beat's check-in and the worker's are the same run
        finally:
            beat.terminate()
            beat.wait(timeout=15)
