"""Shared test setup: a real embedded Valkey, real MCP servers, real `celery worker` processes.

The environment (broker URL, config file, data dir) is set here, before any test imports
`tasks`, because celeryconfig reads it once. A real service that is missing skips locally and
fails under CI (CI=true).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests check logic, not speed: Hypothesis's 200 ms deadline per example is a timing
# assertion, and on a busy 2-core box one example took 323 ms (test_weighted_shares_are_exact).
settings.register_profile("agentful", deadline=None)
settings.load_profile("agentful")

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
IN_CI = os.environ.get("CI", "").lower() == "true"
DATA_DIR = Path(tempfile.mkdtemp(prefix="agentful-tests-"))


def need(condition: bool, why: str) -> None:
    """Skip locally, fail under CI, when a real service or peer is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required under CI: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def make_repo(path: Path) -> Path:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
    (path / "a.txt").write_text("a\n")
    subprocess.run(["git", "add", "."], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "first"], cwd=path, check=True, env=env)
    return path


HTTP_PORT = free_port()
REPO = make_repo(DATA_DIR / "repo")
HAS_NODE = shutil.which("node") is not None and EVERYTHING.exists()

SERVERS: dict[str, Any] = {
    "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
    "git": {"command": sys.executable, "args": ["-m", "mcp_server_git", "--repository", str(REPO)]},
    # Never answers initialize: a server that hangs at start.
    "hangs": {"command": sys.executable, "args": ["-c", "import time; time.sleep(3600)"], "startTimeoutS": 2},
    # Exits at once with a message on stderr: a server that fails to start.
    "crashes": {
        "command": sys.executable,
        "args": ["-c", "import sys; sys.exit('boom: MCP_TOKEN is not set')"],
    },
    "missing": {"command": "/nonexistent/bin/mcp-server"},
    # Nothing listens there: a Streamable HTTP server that is down (connection refused).
    "down-http": {"url": f"http://127.0.0.1:{free_port()}/mcp", "startTimeoutS": 2},
}
if HAS_NODE:
    SERVERS["everything"] = {"command": "node", "args": [str(EVERYTHING), "stdio"]}
    SERVERS["everything-http"] = {"url": f"http://127.0.0.1:{HTTP_PORT}/mcp"}
CONFIG = {"mcp": {"server": {"maxRequestBytes": 65536}}, "servers": SERVERS}
(DATA_DIR / "config.json").write_text(json.dumps(CONFIG, indent=2))


# celeryconfig reads the environment once, so the broker's URL is fixed now; the broker itself
# starts only when a test needs it (the unit tests never do).
BROKER_PORT = free_port()
os.environ.pop("AGENTFUL_SERVERS", None)
os.environ.pop("AGENTFUL_RESULT_BACKEND", None)
os.environ["AGENTFUL_DATA_DIR"] = str(DATA_DIR)
os.environ["AGENTFUL_CONFIG"] = str(DATA_DIR / "config.json")
os.environ["AGENTFUL_BROKER_URL"] = f"redis://127.0.0.1:{BROKER_PORT}/0"


@pytest.fixture
def published() -> Iterator[list[str]]:
    """The names of tasks this process publishes during the test."""
    from celery.signals import before_task_publish

    seen: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        seen.append(str(sender))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """The embedded Valkey every test in this process talks to."""
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    embedded = EmbeddedBroker(Settings(data_dir=DATA_DIR / "test-broker"), port=BROKER_PORT)
    url = embedded.start()
    assert url == os.environ["AGENTFUL_BROKER_URL"], f"broker came up at {url}"
    yield url
    embedded.stop()


@pytest.fixture(scope="session")
def everything_http(broker: str) -> Iterator[str]:
    """server-everything over Streamable HTTP on a free loopback port ("" without Node)."""
    if not HAS_NODE:
        yield ""
        return
    env = {**os.environ, "PORT": str(HTTP_PORT)}
    proc = subprocess.Popen(
        ["node", str(EVERYTHING), "streamableHttp"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", HTTP_PORT):
        assert time.monotonic() < deadline, "server-everything HTTP did not listen within 20 s"
        assert proc.poll() is None, "server-everything HTTP exited at start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{HTTP_PORT}/mcp"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cluster(everything_http: str) -> Iterator[list[Any]]:
    """Two real `celery worker` processes (threads pool) running every configured server."""
    from tasks import app
    from workers.launcher import WorkerProcess, wait_for

    logs = DATA_DIR / "logs"
    logs.mkdir(exist_ok=True)
    workers = [WorkerProcess(f"t{i}@%h", list(SERVERS), log_path=logs / f"t{i}.log").start() for i in (1, 2)]
    host = socket.gethostname()

    def up() -> bool:
        replies = app.control.ping(timeout=0.5) or []
        return {f"t1@{host}", f"t2@{host}"} <= {k for r in replies for k in r}

    assert wait_for(up, 60), f"workers did not answer ping; logs in {logs}"
    yield workers
    for w in workers:
        w.stop()


# tests/servers/meta_echo.py: its tools return what a worker passed them, or count what it ran at once
META_SERVER: dict[str, Any] = {
    "command": sys.executable,
    "args": ["-m", "tests.servers.meta_echo"],
    "cwd": str(ROOT),
}
RELAY_SERVER = "relayer"  # the conformance fixture, with relay on: it asks its caller questions


@contextlib.contextmanager
def own_worker(short: str, servers: dict[str, Any], tmp: Path) -> Iterator[str]:
    """A real `celery worker` named `short@host` with a config file of its own holding `servers`,
    up once it answers ping and its servers' tools are in the catalog; its node name."""
    from tasks import app
    from tasks.api import cluster_catalog
    from workers.launcher import WorkerProcess, wait_for

    path = tmp / "config.json"
    path.write_text(json.dumps({"servers": servers}))
    logs = DATA_DIR / "logs"
    logs.mkdir(exist_ok=True)
    node = f"{short}@{socket.gethostname()}"
    worker = WorkerProcess(
        f"{short}@%h", list(servers), env={"AGENTFUL_CONFIG": str(path)}, log_path=logs / f"{short}.log"
    ).start()
    try:
        assert wait_for(lambda: bool(app.control.ping(destination=[node], timeout=0.5)), 60), (
            f"worker {short} down"
        )
        # This process's own cached catalog, which its calls are checked against (read afresh
        # here): the store may have the servers while that copy, read a moment ago, has not.
        assert wait_for(lambda: set(servers) <= set(cluster_catalog(refresh=True)), 60), (
            f"worker {short} never published its servers' tools"
        )
        yield node
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def relay_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `celery worker` running the conformance fixture as RELAY_SERVER with `relay: true`
    (tests/integration/test_relay.py, tests/gateway/test_gateway_relay.py); its node name."""
    fixture = ROOT / "tests" / "servers" / "conformance_server.py"
    relayer = {"command": sys.executable, "args": [str(fixture)], "relay": True}
    with own_worker("rl", {RELAY_SERVER: relayer}, tmp_path_factory.mktemp("relay")) as node:
        yield node
