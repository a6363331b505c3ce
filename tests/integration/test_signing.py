"""Celery message signing: a worker with AGENTFUL_SIGNING_* set runs only calls signed by a key
whose certificate is in its store. Forged calls (plain JSON, or signed with another key under the
real certificate's name) reach its queue and are dropped unrun; a signed call runs.

Its own broker (a private embedded Valkey), so no other test's worker takes these messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from celery import Celery

from tests.conftest import CONFIG, ROOT, free_port

pytestmark = pytest.mark.integration
AGENTFUL = str(Path(sys.executable).parent / "agentful")
CLIENT = str(ROOT / "tests" / "integration" / "client.py")
ARGS = ("time", "get_current_time", {"timezone": "UTC"})


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[str]:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    embedded = EmbeddedBroker(Settings(data_dir=tmp_path / "broker-data"), port=free_port())
    url = embedded.start()
    yield url
    embedded.stop()


def _pki(tmp: Path) -> dict[str, Path]:
    """The cluster's signing key and certificate (RSA: Celery's `auth` signs with RSA-PSS), the
    store of trusted certificates, and a forger's key."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    signer = ca.issue_cert("agentful-cluster", key_type=trustme.KeyType.RSA)
    forger = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("forger", key_type=trustme.KeyType.RSA)
    store = tmp / "trusted"
    store.mkdir()
    files = {
        "key": (tmp / "signer.key", signer.private_key_pem.bytes()),
        "cert": (tmp / "signer.pem", signer.cert_chain_pems[0].bytes()),
        "store_cert": (store / "signer.pem", signer.cert_chain_pems[0].bytes()),
        "forger_key": (tmp / "forger.key", forger.private_key_pem.bytes()),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()} | {"store": store}


def _env(url: str, key: Path, cert: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_SIGNING_")}
    env.pop("AGENTFUL_RESULT_BACKEND", None)
    return env | {
        "AGENTFUL_BROKER_URL": url,
        "AGENTFUL_SIGNING_KEY": str(key),
        "AGENTFUL_SIGNING_CERT": str(cert),
        "AGENTFUL_SIGNING_CERT_STORE": str(store),
    }


def test_worker_runs_signed_calls_and_drops_forged_ones(own_broker: str, tmp_path: Path) -> None:
    from workers.launcher import WorkerProcess, wait_for

    pki = _pki(tmp_path)
    signed_env = _env(own_broker, pki["key"], pki["cert"], pki["store"])
    log = tmp_path / "worker.log"
    worker = WorkerProcess("signed@%h", ["time"], env=signed_env, log_path=log).start()
    store = redis.Redis.from_url(own_broker)
    try:
        assert wait_for(lambda: store.hexists("agentful:catalog", "time"), 60), log.read_text()[-3000:]

        # Forgery 1: a plain JSON task message, as any Celery producer without the key sends it.
        plain = Celery("forger", broker=own_broker, backend=own_broker)
        json_id = f"forged-json-{uuid.uuid4().hex[:8]}"
        plain.send_task("agentful.call_tool", args=ARGS, queue="mcp.time", task_id=json_id)

        # Forgery 2: signed with another key, claiming the cluster's certificate (which is
        # public). The producer is agentful's own code, configured with the forger's key.
        forged_env = _env(own_broker, pki["forger_key"], pki["cert"], pki["store"])
        submit = [sys.executable, CLIENT, "submit", *ARGS[:2], json.dumps(ARGS[2])]
        done = subprocess.run(submit, env=forged_env, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        forged_id = done.stdout.strip()

        # The same call, properly signed, through the CLI: it runs.
        cmd = [AGENTFUL, "call", *ARGS[:2], "--args", json.dumps(ARGS[2]), "--timeout", "60"]
        done = subprocess.run(
            cmd, env=signed_env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=90
        )
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
        assert json.loads(done.stdout)["structured_content"]["timezone"] == "UTC"

        # Both forgeries were taken off the queue and refused, and neither ran: no result.
        def refused_both() -> bool:
            text = log.read_text()
            return "Refusing to deserialize untrusted content" in text and "Bad signature" in text

        assert wait_for(refused_both, 30), log.read_text()[-3000:]
        for task_id in (json_id, forged_id):
            assert not store.exists(f"celery-task-meta-{task_id}"), f"{task_id} ran"
        assert store.llen("mcp.time") == 0
        plain.close()
    finally:
        store.close()
        worker.stop()


def test_half_configured_signing_is_an_error(tmp_path: Path) -> None:
    """A key without its cert and store must not silently run unsigned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_SIGNING_")}
    env["AGENTFUL_SIGNING_KEY"] = str(tmp_path / "k.pem")
    done = subprocess.run(
        [AGENTFUL, "call", *ARGS[:2]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "AGENTFUL_SIGNING_CERT" in done.stderr


def test_gateway_and_beat_sign_too(own_broker: str, tmp_path: Path) -> None:
    """Beat's scheduled calls and a call through the gateway (both separate processes with the
    signing key) run on a worker that accepts signed messages only; nothing is refused."""
    import anyio
    import httpx2
    import mcp

    from workers.launcher import WorkerProcess, wait_for

    pki = _pki(tmp_path)
    port = free_port()
    config = {
        **CONFIG,
        "schedules": {
            "tick": {
                "server": "time",
                "tool": "get_current_time",
                "arguments": {"timezone": "UTC"},
                "every": 1,
            }
        },
        "gateway": {"host": "127.0.0.1", "port": port},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = _env(own_broker, pki["key"], pki["cert"], pki["store"])
    env |= {"AGENTFUL_CONFIG": str(tmp_path / "config.json"), "AGENTFUL_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "worker.log"
    worker = WorkerProcess("signed2@%h", ["time"], env=env, log_path=log).start()
    procs: list[subprocess.Popen[bytes]] = []
    store = redis.Redis.from_url(own_broker)
    try:
        assert wait_for(lambda: store.hexists("agentful:catalog", "time"), 60), log.read_text()[-3000:]
        for role in (["beat"], ["gateway", "--port", str(port)]):
            with (tmp_path / f"{role[0]}.log").open("wb") as out:
                cmd = [AGENTFUL, *role, "--config", str(tmp_path / "config.json")]
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )

        def ran_from_beat() -> bool:
            return log.read_text().count("succeeded in") >= 2

        assert wait_for(ran_from_beat, 60), (tmp_path / "beat.log").read_text()[-2000:] + log.read_text()[
            -2000:
        ]

        def gateway_up() -> bool:
            try:
                return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx2.TransportError:
                return False

        assert wait_for(gateway_up, 60), (tmp_path / "gateway.log").read_text()[-3000:]

        async def call() -> Any:
            async with mcp.Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=30) as client:
                return await client.call_tool("time__get_current_time", {"timezone": "UTC"})

        result = anyio.run(call)
        assert not result.is_error, str(result) + log.read_text()[-3000:]
        assert json.loads(result.content[0].text)["timezone"] == "UTC"
        text = log.read_text()
        assert "Refusing to deserialize" not in text and "Bad signature" not in text
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        store.close()
        worker.stop()


def test_a_dead_workers_signed_calls_move_to_their_servers_queue(own_broker: str, tmp_path: Path) -> None:
    """Failover with signing on: the body is a signed envelope, so workers/failover.py finds the
    server in the message header set at publish; the moved call, still signed, runs."""
    from tasks.queues import SERVER_HEADER
    from tasks.registry import Registry
    from workers.failover import Reaper, target_queue
    from workers.launcher import WorkerProcess, wait_for

    pki = _pki(tmp_path)
    signed_env = _env(own_broker, pki["key"], pki["cert"], pki["store"])
    dead_queue = "worker.ghost@nowhere"  # a worker's own queue; the worker is gone
    submit = f"from tasks import call_tool\nprint(call_tool.apply_async({ARGS!r}, queue={dead_queue!r}).id)\n"
    done = subprocess.run(
        [sys.executable, "-c", submit],
        env=signed_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    store = redis.Redis.from_url(own_broker)
    worker = None
    try:
        raw = store.lindex(dead_queue, 0)
        assert raw is not None, "the call was not queued on the dead worker's queue"
        payload = json.loads(raw)
        assert payload["content-type"] == "application/data"  # Celery's `auth` serializer: signed
        assert payload["headers"][SERVER_HEADER] == "time"
        assert target_queue(payload) == "mcp.time"
        legacy = {**payload, "headers": {k: v for k, v in payload["headers"].items() if k != SERVER_HEADER}}
        assert target_queue(legacy) == "agentful"  # no header, unreadable body: the control queue

        reaper = Reaper(
            Registry(own_broker), store, broker_is_store=True, me=lambda: None, interval_s=2, expiry_s=5
        )
        assert reaper.reap("ghost@nowhere/0123456789ab") == (0, 1)
        assert store.llen(dead_queue) == 0 and store.llen("mcp.time") == 1 and store.llen("agentful") == 0

        log = tmp_path / "worker.log"
        worker = WorkerProcess("signed3@%h", ["time"], env=signed_env, log_path=log).start()
        get = [sys.executable, CLIENT, "get", task_id, "60"]
        done = subprocess.run(
            get, env=signed_env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=90
        )
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
        assert json.loads(done.stdout)["structured_content"]["timezone"] == "UTC"
        assert wait_for(lambda: store.llen("mcp.time") == 0, 10)
    finally:
        store.close()
        if worker is not None:
            worker.stop()
