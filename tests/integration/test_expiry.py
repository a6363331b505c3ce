"""A call nobody could take in time expires instead of running for a caller long gone: every
`.delay()` gets `expires` (AGENTFUL_CALL_EXPIRES_S after it is due) unless it sets its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.brokers import RedisProcess
from tests.chaos.harness import LEDGER_SERVER, read_ledger
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SUBMIT = """
import json
from tasks import call_tool
late = call_tool.delay('ledger', 'record', {'key': 'late', 'seconds': 0})
own = call_tool.apply_async(('ledger', 'record', {'key': 'own', 'seconds': 0}), expires=600)
print(json.dumps([late.id, own.id]))
"""

GET = """
import json, sys
from celery.exceptions import TaskRevokedError
from tasks import call_tool
out = []
for task_id in sys.argv[1:]:
    try:
        out.append(call_tool.AsyncResult(task_id).get(timeout=30)['content'][0]['text'])
    except TaskRevokedError:
        out.append('revoked')
print(json.dumps(out))
"""


def test_a_call_nobody_took_in_time_expires_and_never_runs(tmp_path: Path) -> None:
    from workers.launcher import WorkerProcess

    broker = RedisProcess.valkey(tmp_path / "broker").start()
    ledger = tmp_path / "ledger.txt"
    config = {
        "servers": {
            "ledger": {
                "command": sys.executable,
                "args": [str(LEDGER_SERVER)],
                "env": {"LEDGER_FILE": str(ledger)},
            }
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {
        "AGENTFUL_BROKER_URL": broker.url,
        "AGENTFUL_CONFIG": str(tmp_path / "config.json"),
        "AGENTFUL_DATA_DIR": str(tmp_path / "data"),
        "AGENTFUL_CALL_EXPIRES_S": "2",
    }
    full = {**os.environ, **env}
    full.pop("AGENTFUL_RESULT_BACKEND", None)
    worker = None
    try:
        done = subprocess.run(
            [sys.executable, "-c", SUBMIT],
            env=full,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        ids = json.loads(done.stdout)
        time.sleep(3)  # no worker yet: the default expiry passes
        worker = WorkerProcess("late@%h", ["ledger"], env=env, log_path=tmp_path / "worker.log").start()
        got = subprocess.run(
            [sys.executable, "-c", GET, *ids],
            env=full,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == ["revoked", "own"]
        ran = [line["key"] for line in read_ledger(Path(str(ledger) + ".jsonl")) if line["ev"] == "start"]
        assert ran == ["own"]
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
