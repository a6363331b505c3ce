"""The same call through the machine's own Redis and RabbitMQ (skipped locally if absent)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, need, port_open

pytestmark = pytest.mark.integration
CLIENT = str(ROOT / "tests" / "integration" / "client.py")


@pytest.mark.parametrize(
    ("url", "port"),
    [("redis://127.0.0.1:6379/9", 6379), ("amqp://guest:guest@127.0.0.1:5672//", 5672)],
    ids=["redis", "rabbitmq"],
)
def test_call_through_an_external_broker(url: str, port: int, tmp_path: Path) -> None:
    need(port_open("127.0.0.1", port), f"a broker on 127.0.0.1:{port}")
    from workers.launcher import WorkerProcess

    env = {**os.environ, "AGENTFUL_BROKER_URL": url}
    env.pop("AGENTFUL_RESULT_BACKEND", None)
    purge = [sys.executable, "-m", "celery", "-A", "tasks", "purge", "-f", "-Q", "agentful,mcp.time"]
    subprocess.run(purge, env=env, capture_output=True, timeout=60, check=False)
    name = f"ext-{uuid.uuid4().hex[:6]}@%h"
    worker = WorkerProcess(name, ["time"], env=env, log_path=tmp_path / "worker.log").start()
    try:
        done = subprocess.run(
            [
                sys.executable,
                CLIENT,
                "call",
                "time",
                "get_current_time",
                '{"timezone": "Europe/Paris"}',
                "60",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr + (tmp_path / "worker.log").read_text()[-2000:]
        result = json.loads(done.stdout)
        assert result["structured_content"]["timezone"] == "Europe/Paris"
        assert result["worker"].startswith("ext-")
    finally:
        worker.stop()
        _delete_own_queue(url, f"worker.{name.replace('%h', socket.gethostname())}")


def _delete_own_queue(url: str, queue: str) -> None:
    """The worker's own queue is durable on RabbitMQ: leave no queue behind per run."""
    from kombu.connection import Connection

    with Connection(url) as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_delete(queue)  # (Redis keeps no empty queue to delete)
