"""The broker over TLS: a real redis-server serving only TLS (client certificates required), a
real `celery worker` and a producer (the `agentful call` CLI) both on `rediss://`.

The CA, the server's and the client's certificates are made here with trustme.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme

from tests.conftest import ROOT, free_port, need, port_open

pytestmark = pytest.mark.integration
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
AGENTFUL = str(Path(sys.executable).parent / "agentful")


@dataclass
class TlsRedis:
    url: str
    ca: Path
    cert: Path
    key: Path
    log: Path


def _write_pki(tmp: Path) -> tuple[Path, Path, Path, Path, Path, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("agentful-worker")
    paths = {
        "ca.pem": ca.cert_pem.bytes(),
        "server.pem": server.cert_chain_pems[0].bytes(),
        "server.key": server.private_key_pem.bytes(),
        "client.pem": client.cert_chain_pems[0].bytes(),
        "client.key": client.private_key_pem.bytes(),
        # A CA that signed nothing of this broker: verifying against it must fail.
        "other-ca.pem": trustme.CA().cert_pem.bytes(),
    }
    for name, data in paths.items():
        (tmp / name).write_bytes(data)
    return tuple(tmp / n for n in paths)  # type: ignore[return-value]


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    need(os.path.exists(REDIS_SERVER), "redis-server (Debian's is built with TLS) for a rediss:// broker")
    ca, cert, key, client_cert, client_key, _ = _write_pki(tmp_path)
    port = free_port()
    log = tmp_path / "redis.log"
    cmd = [
        REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        "--logfile", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    from workers.launcher import wait_for

    try:
        assert wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 10)
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            need("TLS" not in text, f"redis-server without TLS support: {text[-300:]}")
            pytest.fail(f"redis-server exited at start: {text[-1000:]}")
        yield TlsRedis(f"rediss://127.0.0.1:{port}/0", ca, client_cert, client_key, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _env(broker: TlsRedis, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_BROKER_")}
    env.pop("AGENTFUL_RESULT_BACKEND", None)
    env |= {
        "AGENTFUL_BROKER_URL": broker.url,
        "AGENTFUL_BROKER_CA": str(broker.ca),
        "AGENTFUL_BROKER_CERT": str(broker.cert),
        "AGENTFUL_BROKER_KEY": str(broker.key),
    }
    return env | extra


def _call(env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [AGENTFUL, "call", "time", "get_current_time", "--args", '{"timezone": "UTC"}']
    cmd += ["--timeout", str(timeout_s)]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout_s + 30
    )


def test_worker_and_producer_over_rediss(tls_redis: TlsRedis, tmp_path: Path) -> None:
    from workers.launcher import WorkerProcess, wait_for

    env = _env(tls_redis)
    worker = WorkerProcess("tls@%h", ["time"], env=env, log_path=tmp_path / "worker.log").start()
    try:
        # The worker publishes the tool catalog over TLS with redis-py (the same URL, its ssl_*
        # query parameters); read it the way the producer will.
        from tasks.settings import Settings, with_redis_tls

        url = with_redis_tls(tls_redis.url, Settings.model_validate(_tls_settings(tls_redis)))
        client = redis.Redis.from_url(url, socket_timeout=3)
        assert wait_for(lambda: client.hexists("agentful:catalog", "time"), 60), (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
        done = _call(env)
        assert done.returncode == 0, done.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        result = json.loads(done.stdout)
        assert result["structured_content"]["timezone"] == "UTC"
        assert result["worker"].startswith("tls@")
        # Every connection the cluster made is TLS: the server has no plain port at all.
        clients = client.client_list()
        assert len(clients) >= 2
        client.close()
    finally:
        worker.stop()


def test_a_broker_certificate_from_another_ca_is_refused(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """ssl_cert_reqs=required is always on: a producer trusting another CA does not connect."""
    env = _env(tls_redis, AGENTFUL_BROKER_CA=str(tmp_path / "other-ca.pem"))
    done = _call(env, timeout_s=5)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "BrokerUnavailableError" in done.stderr, done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr


def test_a_client_without_certificate_is_refused(tls_redis: TlsRedis) -> None:
    """The broker requires client certificates (tls-auth-clients yes): the CA alone is not enough."""
    from tasks.settings import Settings, with_redis_tls

    settings = Settings(broker_ca=tls_redis.ca)
    client = redis.Redis.from_url(with_redis_tls(tls_redis.url, settings), socket_timeout=3)
    with pytest.raises((redis.ConnectionError, OSError)):
        client.ping()
    client.close()
    good = redis.Redis.from_url(
        with_redis_tls(tls_redis.url, Settings.model_validate(_tls_settings(tls_redis))), socket_timeout=3
    )
    assert good.ping()
    good.close()


def _tls_settings(broker: TlsRedis) -> dict[str, Path]:
    return {"broker_ca": broker.ca, "broker_cert": broker.cert, "broker_key": broker.key}
