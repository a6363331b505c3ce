"""One caller's bad input never changes another caller's outcome: a message that skipped the
checks of `.delay()` (sent raw, as `celery call` or another client could) fails as that caller's
error on the worker, while another caller's call on the same shared session runs on untouched,
exactly once, with no session restart and the breaker closed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos.brokers import RedisProcess
from tests.chaos.harness import ChaosCluster, read_ledger
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

RAW = """
import json, sys
from tasks import app, call_tool
from tasks.errors import AgentfulError
queue = 'worker.' + sys.argv[1]
good = call_tool.apply_async(('ledger', 'record', {'key': 'good', 'seconds': 2}), queue=queue)
deep = 1
for _ in range(100):
    deep = [deep]
raw = [
    ({'key': 'nan'}, {'timeout_s': float('nan')}),
    ({'key': 'zero'}, {'timeout_s': 0}),
    ({'key': 'str'}, {'timeout_s': '5'}),
    ({'key': 'deep', 'x': deep}, {}),
]
bad = [app.send_task('agentful.call_tool', ('ledger', 'record', a), k, queue=queue) for a, k in raw]
errors = []
for r in bad:
    try:
        r.get(timeout=30)
        errors.append('no error')
    except AgentfulError as exc:
        errors.append(type(exc).__name__)
print(json.dumps({'good': good.get(timeout=30)['content'][0]['text'], 'errors': errors}))
"""


def test_a_raw_bad_call_fails_alone_and_the_shared_session_runs_on(tmp_path: Path) -> None:
    import json

    from tasks.registry import Registry

    broker = RedisProcess.valkey(tmp_path / "broker").start()
    cluster = ChaosCluster(tmp_path, broker, workers=1, concurrency=8)
    try:
        cluster.start()
        done = subprocess.run(
            [sys.executable, "-c", RAW, cluster.node(0)], env=cluster.env, cwd=ROOT,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        assert out["good"] == "good"
        assert out["errors"] == ["InvalidOptionError"] * 3 + ["InvalidArgumentsError"], out
        runs = [
            line["key"] for line in read_ledger(Path(str(cluster.ledger) + ".jsonl")) if line["ev"] == "start"
        ]
        assert runs == ["good"], runs
        health = Registry(broker.url).alive()[cluster.node(0)].servers["ledger"]
        assert (health.restarts, health.breaker, health.errors) == (0, "closed", 0), health
    finally:
        cluster.stop()
