"""Priorities and delays on real brokers: `apply_async(..., priority=N)`, `countdown`, `eta`.

Priorities are Celery's own, so the most urgent number depends on the broker (README
"Priorities and schedules"): on Redis/Valkey 0 goes first, on RabbitMQ 9 does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BROKER_PORT, HAS_NODE, ROOT, need, port_open

pytestmark = pytest.mark.integration

BACKLOG = 20

# A user's program, run with the broker in its environment (the test process's own app is bound
# to the embedded broker): warm the worker up, queue a backlog of slow background calls, then one
# urgent call last; print when each finished.
SUBMIT = """
import json, sys
from tasks import call_tool
queue, urgent, background, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
call_tool.apply_async(("everything", "echo", {"message": "warm"}), queue=queue).get(timeout=90)
slow = ("everything", "trigger-long-running-operation", {"duration": 0.2, "steps": 1})
backlog = [call_tool.apply_async(slow, queue=queue, priority=background) for _ in range(n)]
first = call_tool.apply_async(slow, queue=queue, priority=urgent)
for r in [*backlog, first]:
    r.get(timeout=120)
done = [r.date_done.isoformat() for r in backlog]
print(json.dumps({"urgent": first.date_done.isoformat(), "backlog": done}))
"""


@pytest.mark.parametrize(
    ("broker_url", "urgent", "background"),
    [(None, 0, 9), ("amqp://guest:guest@127.0.0.1:5672//", 9, 0)],
    ids=["valkey", "rabbitmq"],
)
def test_an_urgent_call_overtakes_a_backlog(
    broker: str, broker_url: str | None, urgent: int, background: int, tmp_path: Path
) -> None:
    need(HAS_NODE, "node and server-everything (npm ci)")
    if broker_url is not None:
        need(port_open("127.0.0.1", 5672), "a RabbitMQ broker on 127.0.0.1:5672")
    from kombu.connection import Connection

    from tasks import app
    from tasks.registry import worker_queue
    from workers.launcher import WorkerProcess

    url = broker_url or broker
    # Results (and this worker's heartbeat) in a database of the embedded Valkey of their own.
    env = {"AGENTFUL_BROKER_URL": url, "AGENTFUL_RESULT_BACKEND": f"redis://127.0.0.1:{BROKER_PORT}/2"}
    name = f"prio-{uuid.uuid4().hex[:6]}"
    queue = f"prio.{name}"
    # One call at a time, none reserved ahead: the broker alone decides which call runs next.
    worker = WorkerProcess(
        f"{name}@%h", ["everything"], env=env, concurrency=1, prefetch=1, queues=[queue],
        log_path=tmp_path / "worker.log",
    ).start()  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-c", SUBMIT, queue, str(urgent), str(background), str(BACKLOG)],
            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "worker.log").read_text()[-2000:]
    finally:
        worker.stop()
        with Connection(url, transport_options=app.conf.broker_transport_options) as conn:
            for q in (queue, worker_queue(f"{name}@{socket.gethostname()}")):
                conn.default_channel.queue_delete(q)
    finished = json.loads(done.stdout)
    urgent_done = datetime.fromisoformat(finished["urgent"])
    ahead = sum(datetime.fromisoformat(d) < urgent_done for d in finished["backlog"])
    # Queued last, FIFO would run it last (20 ahead); the one running when it arrived and at
    # most a few more may finish first.
    print(f"{len(finished['backlog'])} background calls, {ahead} finished before the urgent one")
    assert ahead < BACKLOG // 2, f"{ahead} of {BACKLOG} background calls finished before the urgent one"


def _utc(value: Any) -> datetime:
    moment: datetime = value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_countdown_and_eta_delay_a_call(cluster: Any) -> None:
    from tasks import call_tool

    args = ("time", "get_current_time", {"timezone": "UTC"})
    call_tool.apply_async(args).get(timeout=30)  # sessions up: the delay is all that is measured
    submitted = datetime.now(UTC)
    later = call_tool.apply_async(args, countdown=2)
    at = call_tool.apply_async(args, eta=submitted + timedelta(seconds=2))
    now = call_tool.apply_async(args)
    for result in (later, at, now):
        assert result.get(timeout=30)["is_error"] is False
    assert _utc(later.date_done) - submitted >= timedelta(seconds=2)
    assert _utc(at.date_done) - submitted >= timedelta(seconds=2)
    assert _utc(now.date_done) < _utc(later.date_done), "an undelayed call waits for nothing"
