"""The `agentful` commands as a user runs them: real processes, real servers, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from tests.conftest import DATA_DIR, SERVERS, free_port

pytestmark = pytest.mark.e2e
AGENTFUL = str(Path(sys.executable).parent / "agentful")


def agentful(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTFUL, *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_call_prints_the_result(cluster: Any) -> None:
    done = agentful("call", "time", "get_current_time", "--args", '{"timezone": "Asia/Tokyo"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["structured_content"]["timezone"] == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["call", "time", "get_current_time", "--args", "{bad"], 2, ["not valid JSON"]),
        (["call", "nosuch", "tool"], 2, ["UnknownServerError", "nosuch"]),
        (["call", "time", "get_current_time", "--args", '{"timezone": 1}'], 2, ["InvalidArgumentsError"]),
        (["call", "time", "get_current_time", "--args", '{"timezone": "Nowhere/Land"}'], 1, ["Nowhere/Land"]),
    ],
)
def test_call_errors_have_clear_messages_and_exit_codes(
    cluster: Any, args: list[str], code: int, words: list[str]
) -> None:
    done = agentful(*args)
    assert done.returncode == code, done.stdout + done.stderr
    for word in words:
        assert word in done.stdout + done.stderr


def test_tools_lists_the_cluster(cluster: Any) -> None:
    done = agentful("tools")
    assert done.returncode == 0, done.stderr
    assert "get_current_time" in done.stdout and "git_status" in done.stdout


def test_a_bad_config_file_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"servers": {"git": {"comand": "x"}}}))
    done = agentful("worker", "--config", str(bad), timeout_s=30)
    assert done.returncode == 2
    assert "servers.git" in done.stderr and "comand" in done.stderr


def test_flower_shows_each_call_with_name_arguments_and_result(cluster: Any) -> None:
    from tasks import call_tool

    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}  # Flower's JSON API, for the test to read
    quiet = subprocess.DEVNULL
    flower = subprocess.Popen([AGENTFUL, "flower", "--port", str(port)], env=env, stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + 60
        found: dict[str, Any] = {}
        while time.monotonic() < deadline and not found:
            call_tool.delay("time", "get_current_time", {"timezone": "America/Lima"}).get(timeout=30)
            try:
                tasks = httpx2.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).json()
            except (httpx2.HTTPError, ValueError):
                tasks = {}
            found = next(
                (
                    t
                    for t in tasks.values()
                    if t.get("name") == "agentful.call_tool" and "Lima" in str(t.get("args"))
                ),
                {},
            )
            time.sleep(0.5)
        assert found, "Flower never showed an agentful.call_tool task"
        assert "get_current_time" in str(found["args"])
        assert found["state"] == "SUCCESS"
        assert "America/Lima" in str(found["result"])
        assert found["runtime"] is not None
    finally:
        flower.terminate()
        flower.wait(timeout=15)


def test_up_runs_a_cluster_that_call_finds_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"servers": {"time": SERVERS["time"]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_")}
    env["AGENTFUL_DATA_DIR"] = str(tmp_path / "data")
    up = subprocess.Popen(
        [AGENTFUL, "up", "--config", str(config), "--workers", "1", "--no-flower", "--no-beat"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        assert any("workers 1 ready" in line for line in lines), "".join(lines)
        children = psutil.Process(up.pid).children(recursive=True)
        done = agentful("call", "time", "get_current_time", "--args", '{"timezone": "UTC"}', env=env)
        assert done.returncode == 0, done.stderr
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running after Ctrl-C: {[p.cmdline() for p in alive]}"
    assert not (tmp_path / "data" / "broker.url").exists()


def test_demo_runs_the_main_job_on_the_embedded_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_")}
    env["AGENTFUL_DATA_DIR"] = str(tmp_path)
    done = agentful("demo", "--calls", "60", "--no-flower", env=env, timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "60 MCP tool calls" in done.stdout
    assert "demo-1@" in done.stdout and "demo-2@" in done.stdout
    assert "embedded Valkey" in done.stdout


def test_a_servers_stderr_goes_to_its_log_file(cluster: Any) -> None:
    from tasks import call_tool
    from tasks.errors import ServerStartError

    with pytest.raises(ServerStartError):
        call_tool.delay("crashes", "anything", {}).get(timeout=30)
    logs = list((DATA_DIR / "logs").glob("crashes.*.log"))
    assert logs, "no log file for the crashing server"
    assert any("boom: MCP_TOKEN is not set" in p.read_text() for p in logs)
