"""Flower as an operator meets it: readable calls, secrets masked, a login that holds.

Real `agentful flower` and `agentful up` processes, real workers, real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from tests.conftest import HAS_NODE, SERVERS, free_port, need
from tests.e2e.test_cli import AGENTFUL, agentful

pytestmark = pytest.mark.e2e
USER, PASSWORD = "ops", "pw-7f3e9c1d-not-in-logs"
SECRET = "Bearer tok-93c1b7e2aa54"


@pytest.fixture
def flower(cluster: Any, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`agentful flower` with basic auth from AGENTFUL_FLOWER_BASIC_AUTH; its output in a file."""
    port = free_port()
    env = {**os.environ, "AGENTFUL_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([AGENTFUL, "flower", "--port", str(port)], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx2.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, log.read_text()
        yield url, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _tasks(url: str) -> dict[str, Any]:
    try:
        got = httpx2.get(f"{url}/api/tasks", auth=(USER, PASSWORD), timeout=5)
        return dict(got.json()) if got.status_code == 200 else {}
    except (httpx2.HTTPError, ValueError):
        return {}


def test_basic_auth_refuses_without_credentials_and_accepts_with_them(
    flower: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, proc, log = flower
    assert httpx2.get(f"{url}/api/tasks", timeout=5).status_code == 401
    assert httpx2.get(f"{url}/api/tasks", auth=(USER, "wrong"), timeout=5).status_code == 401
    assert httpx2.get(f"{url}/", timeout=5).status_code == 401
    assert httpx2.get(f"{url}/api/tasks", auth=(USER, PASSWORD), timeout=5).status_code == 200
    assert httpx2.get(f"{url}/", auth=(USER, PASSWORD), timeout=5).status_code == 200
    # What Prometheus and a container healthcheck read stays open (Flower serves them without login).
    assert httpx2.get(f"{url}/metrics", timeout=5).status_code == 200
    # The password is on no command line (`ps` shows every user's) and in no log line.
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        assert PASSWORD not in " ".join(p.cmdline())
    assert PASSWORD not in log.read_text()


def test_calls_read_as_the_tool_with_arguments_and_secrets_masked(
    flower: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    need(HAS_NODE, "server-everything needs Node")
    from tasks import call_tool

    url, _, _ = flower
    long_text = "x" * 500
    wanted = {
        "time.get_current_time(timezone='America/Lima')": None,
        "everything.echo(message='***')": None,
        "everything.echo(message='" + "x" * 62 + "…)": None,  # cut at 64 characters
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and None in wanted.values():
        call_tool.delay("time", "get_current_time", {"timezone": "America/Lima"}).get(timeout=30)
        call_tool.delay("everything", "echo", {"message": SECRET}, project_id="p-7").get(timeout=30)
        call_tool.delay("everything", "echo", {"message": long_text}).get(timeout=30)
        for task in _tasks(url).values():
            if task.get("args") in wanted and task.get("state") == "SUCCESS":
                wanted[task["args"]] = task
        time.sleep(0.5)
    assert None not in wanted.values(), f"Flower did not show: {[k for k, v in wanted.items() if v is None]}"
    masked = wanted["everything.echo(message='***')"]
    assert masked is not None
    assert masked["name"] == "agentful.call_tool"
    assert masked["kwargs"] == "{'project_id': 'p-7'}"
    # The tool's result echoes the secret back (that is the result); the arguments never show it.
    shown = [str(t.get(k)) for t in _tasks(url).values() for k in ("args", "kwargs", "name")]
    assert not [s for s in shown if "tok-93c1b7e2aa54" in s]


def test_a_malformed_login_is_refused_without_echoing_it(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTFUL_FLOWER_BASIC_AUTH": "only-a-secret-no-colon"}
    done = agentful("flower", "--port", str(free_port()), env=env, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "user:password" in done.stderr
    assert "only-a-secret-no-colon" not in done.stdout + done.stderr


def test_up_starts_flower_behind_its_login_and_prints_its_port(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"servers": {"time": SERVERS["time"]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFUL_", "FLOWER_"))}
    env["AGENTFUL_DATA_DIR"] = str(tmp_path / "data")
    env["AGENTFUL_FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
    port = free_port()
    cmd = [AGENTFUL, "up", "--config", str(config), "--workers", "1", "--no-beat", "--flower-port", str(port)]
    up = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 90
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            lines.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        assert f"flower  http://127.0.0.1:{port}  (basic auth)\n" in lines, "".join(lines)
        url = f"http://127.0.0.1:{port}"
        got: int | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and got is None:
            try:
                got = httpx2.get(f"{url}/api/workers", timeout=5).status_code
            except httpx2.HTTPError:
                time.sleep(0.3)
        assert got == 401
        # Flower asks the workers (a broadcast, 1 s to answer): one still starting, or slow on a
        # busy box, is missing from that answer and shows at the next refresh, as for a user.
        deadline = time.monotonic() + 30
        while True:
            workers = httpx2.get(f"{url}/api/workers?refresh=1", auth=(USER, PASSWORD), timeout=15)
            listed = workers.status_code == 200 and any(k.startswith("worker-1@") for k in workers.json())
            if listed or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert listed, (workers.status_code, workers.text[:500])
        assert PASSWORD not in "".join(lines)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:  # a failed check: stop it as Ctrl-C would, so its broker goes too
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
    assert PASSWORD not in (tmp_path / "data" / "logs" / "flower.log").read_text()
