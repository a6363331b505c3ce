"""The audit log: every call through a real gateway as one JSON line with who, what, when,
outcome and duration; failed calls marked failed; no secret or token in it or in any log."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import CONFIG, DATA_DIR, ROOT, free_port
from tests.gateway.conftest import RunningGateway

pytestmark = pytest.mark.integration
AGENTFUL = str(Path(sys.executable).parent / "agentful")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


Calls = list[tuple[str, dict[str, Any]]]


async def _calls(url: str, calls: Calls, headers: dict[str, str] | None = None) -> list[Any]:
    out = []
    async with (
        httpx2.AsyncClient(headers=headers or {}, timeout=60) as http,
        mcp.Client(streamable_http_client(url, http_client=http)) as client,
    ):
        for name, args in calls:
            out.append(await client.call_tool(name, args))
    return out


def _start_gateway(config: dict[str, Any], tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`agentful gateway` as a user runs it, its output in a log file; (process, base URL, log)."""
    from workers.launcher import wait_for

    config_file = tmp_path / "gateway.json"
    config_file.write_text(json.dumps(config))
    log = tmp_path / "gateway.log"
    port = config["gateway"]["port"]
    cmd = [AGENTFUL, "gateway", "--config", str(config_file), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            health = httpx2.get(f"{base}/healthz", timeout=2)
        except httpx2.TransportError:
            return False
        return health.status_code == 200 and "time" in health.json().get("servers", [])

    assert wait_for(ready, 60), log.read_text()[-3000:]
    return proc, base, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_calls_are_audited(gateway_factory: Callable[..., RunningGateway], tmp_path: Path) -> None:
    path = tmp_path / "audit" / "calls.jsonl"
    gw = gateway_factory({"audit": {"path": str(path)}})
    gw.wait_for_tools("time__get_current_time")
    before = datetime.now().astimezone()
    calls: Calls = [
        ("time__get_current_time", {"timezone": "UTC"}),
        ("time__get_current_time", {"timezone": "Mars/Olympus_Mons"}),  # the tool says no
        ("time__get_current_time", {"timezone": 5}),  # fails the input schema
    ]
    ok, tool_error, bad_args = anyio.run(_calls, gw.url, calls)
    assert not ok.is_error and tool_error.is_error and bad_args.is_error
    mine = [e for e in lines(path) if e["server"] == "time"][-3:]
    assert [e["outcome"] for e in mine] == ["ok", "tool_error", "failed"]
    assert [e["ok"] for e in mine] == [True, False, False]
    assert "error" not in mine[0] and mine[2]["error"] == "InvalidArgumentsError"
    for entry in mine:
        assert entry["event"] == "tools/call"
        assert entry["client_id"] == "anonymous"  # auth is off
        assert entry["tool"] == "get_current_time"
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert entry["trace_id"]
        assert datetime.fromisoformat(entry["ts"]) >= before.replace(microsecond=0)
    # Arguments and results are never written.
    text = path.read_text()
    assert "Mars/Olympus_Mons" not in text and "UTC" not in text.replace('"ts"', "")


def test_no_secret_or_token_in_the_audit_file_or_any_log(cluster: list[Any], tmp_path: Path) -> None:
    """A real `agentful gateway` process with OAuth on: tokens are issued, used, refused; then
    neither the client secret nor any token is found in its log, the audit file, or the
    workers' logs; the audit line names the client."""
    from gateway.auth.passwords import hash_secret

    secret = "s3cret-" + uuid.uuid4().hex
    port = free_port()
    audit_file = tmp_path / "audit.jsonl"
    config = {
        **CONFIG,
        "gateway": {
            "host": "127.0.0.1",
            "port": port,
            "auth": {
                "enabled": True,
                "roles": {"caller": ["tools:call:time/*"]},
                "clients": {"ci-bot": {"secretHash": hash_secret(secret), "roles": ["caller"]}},
            },
            "audit": {"path": str(audit_file)},
        },
    }
    proc, base, log = _start_gateway(config, tmp_path)
    try:
        basic = base64.b64encode(f"ci-bot:{secret}".encode()).decode()
        grant = {"grant_type": "client_credentials"}
        by_basic = httpx2.post(f"{base}/token", data=grant, headers={"authorization": f"Basic {basic}"})
        by_post = httpx2.post(f"{base}/token", data=grant | {"client_id": "ci-bot", "client_secret": secret})
        wrong_secret = {"client_id": "ci-bot", "client_secret": secret + "x"}
        wrong = httpx2.post(f"{base}/token", data=grant | wrong_secret)
        assert by_basic.status_code == by_post.status_code == 200, by_basic.text + by_post.text
        assert wrong.status_code in (400, 401)
        tokens = [by_basic.json()["access_token"], by_post.json()["access_token"]]
        bad = httpx2.get(f"{base}/mcp", headers={"authorization": f"Bearer {tokens[0][:-4]}AAAA"})
        assert bad.status_code == 401

        (result,) = anyio.run(
            _calls,
            f"{base}/mcp",
            [("time__get_current_time", {"timezone": "UTC"})],
            {"authorization": f"Bearer {tokens[1]}"},
        )
        assert not result.is_error, result
    finally:
        _stop(proc)
    entries = lines(audit_file)
    assert [(e["client_id"], e["server"], e["tool"], e["outcome"]) for e in entries] == [
        ("ci-bot", "time", "get_current_time", "ok")
    ]
    logs = {"audit": audit_file, "gateway": log, **{p.name: p for p in (DATA_DIR / "logs").glob("*.log")}}
    assert log.stat().st_size > 0  # the gateway did log (uvicorn's lines at least)
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        assert secret not in text, f"the client secret is in {name}"
        for token in tokens:
            assert token not in text, f"an access token is in {name}"
            assert token.split(".")[2] not in text, f"a token's signature is in {name}"
