"""Signing key rotation runs inside beat (beat/scheduler.py), never on a worker: a real
`agentful beat` replaces a key older than the default 30 days at its start and keeps a younger
one; a process that loads the Celery config with gateway auth on imports no gateway code and
registers no rotation task."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.auth.keys import DAY_S, DirKeyStore, generate_key, signing_key_of
from tests.conftest import ROOT

AGENTFUL = str(Path(sys.executable).parent / "agentful")


@contextlib.contextmanager
def running_beat(config: Path, data_dir: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "AGENTFUL_DATA_DIR": str(data_dir)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [AGENTFUL, "beat", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_beat_rotates_an_aged_key_itself_and_keeps_a_young_one(broker: str, tmp_path: Path) -> None:
    from workers.launcher import wait_for

    keys = tmp_path / "keys"
    config = tmp_path / "auth.json"
    config.write_text(json.dumps({"gateway": {"auth": {"enabled": True, "keyStore": str(keys)}}}))
    store = DirKeyStore(keys)
    aged = generate_key("ES256", time.time() - 31 * DAY_S, None)  # rotationDays: the default 30
    store.put(aged)
    log = tmp_path / "beat.log"

    with running_beat(config, tmp_path / "data", log) as beat:
        assert wait_for(lambda: len(store.load()) == 2 or beat.poll() is not None, 60), log.read_text()
    assert beat.returncode in (0, -signal.SIGTERM, 143), log.read_text()
    by_kid = {k.kid: k for k in store.load()}
    assert len(by_kid) == 2, log.read_text()
    new = signing_key_of(list(by_kid.values()))
    assert new is not None and new.kid != aged.kid
    assert by_kid[aged.kid].retired is not None  # still verifies until its tokens expire
    text = log.read_text()
    assert f"new {new.kid}" in text, text
    assert "Sending due task rotate-signing-keys" not in text  # run in beat, not sent to a worker

    # A beat started again checks at once too; the key is a day old at most: nothing changes.
    with running_beat(config, tmp_path / "data", log):
        assert wait_for(lambda: log.read_text().count("signing keys checked in") >= 1, 60), log.read_text()
    assert {k.kid for k in store.load()} == set(by_kid)


def test_loading_the_celery_config_with_auth_on_imports_no_gateway(tmp_path: Path) -> None:
    config = tmp_path / "auth.json"
    config.write_text(json.dumps({"gateway": {"auth": {"enabled": True, "keyStore": str(tmp_path)}}}))
    probe = (
        "import sys, tasks\n"
        "from tasks import app\n"
        "app.loader.import_default_modules()\n"  # what a worker imports (workers.boot)
        "assert 'rotate-signing-keys' in app.conf.beat_schedule, app.conf.beat_schedule\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'))\n"
        "print('agentful.rotate_signing_keys' in app.tasks)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "AGENTFUL_CONFIG": str(config)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "False"], done.stdout
