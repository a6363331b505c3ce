"""Agent work, for real: git repositories as projects, real Claude Code from npm (pinned in
package.json), a real cluster on its own broker, OS users for isolation (made here, as root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.brokers import RedisProcess
from tests.chaos.harness import ChaosCluster
from tests.conftest import ROOT, make_repo, need

CLAUDE = ROOT / "node_modules" / ".bin" / "claude"
USERS = ("agentful-alpha", "agentful-beta")


def bare_repo(base: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository (what a project is cloned from) holding `files`, one commit."""
    work = make_repo(base / f"{name}-src")
    for rel, text in files.items():
        (work / rel).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.invalid"}
    subprocess.run(["git", "add", "."], cwd=work, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "files"], cwd=work, check=True, env=env)
    bare = base / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


@pytest.fixture(scope="session")
def claude() -> str:
    need(CLAUDE.exists(), "Claude Code in node_modules (npm ci)")
    return str(CLAUDE)


@pytest.fixture(scope="session")
def project_users() -> tuple[str, ...]:
    """OS users for `isolation.user` ("agentful-{project}"): made once, as root."""
    need(os.geteuid() == 0 and shutil.which("useradd") is not None, "root and useradd (isolation.user)")
    for user in USERS:
        if subprocess.run(["id", user], capture_output=True, check=False).returncode != 0:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True
            )
    return USERS


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "repos"
    return {
        "alpha": bare_repo(base, "alpha", {"secret.txt": "alpha's secret\n", "main.py": "print('alpha')\n"}),
        "beta": bare_repo(base, "beta", {"secret.txt": "beta's secret\n"}),
    }


@contextlib.contextmanager
def scripted_endpoint(module: str, script: Path, log: Path) -> Iterator[tuple[str, Any]]:
    """`python -m module PORT SCRIPT` on a free port: its base URL and `write(items)` for its script."""
    import json
    import sys

    from tests.chaos.brokers import free_port, wait_port

    port = free_port()
    script.write_text("[]")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(port), str(script)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )  # fmt: skip
    try:
        wait_port(port, 20, proc)
        yield f"http://127.0.0.1:{port}", lambda items: script.write_text(json.dumps(items))
    finally:
        proc.kill()  # not terminate: uvicorn would wait for a slow answer still in flight
        proc.wait(timeout=10)


def run_client(cluster: ChaosCluster, code: str, *args: str, timeout_s: float = 300) -> Any:
    """A user's program (Python `code`, printing one JSON value) against `cluster`."""
    import json
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=cluster.env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def agent_cluster(tmp_path: Path) -> Iterator[Any]:
    """Builds one cluster per test: `agent_cluster(servers=..., config=..., workers=1)`."""
    started: list[tuple[ChaosCluster, RedisProcess]] = []
    for parent in [tmp_path, *tmp_path.parents]:  # pytest's tmp dirs are 0700: let project users in
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)

    def make(
        *,
        servers: dict[str, Any],
        config: dict[str, Any],
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> ChaosCluster:
        broker = RedisProcess.valkey(tmp_path / f"broker{len(started)}").start()
        cluster = ChaosCluster(
            tmp_path / f"cluster{len(started)}", broker, workers=workers, concurrency=4,
            servers=servers, config=config,
            env={"AGENTFUL_WORKSPACES": str(tmp_path / "workspaces"), **(env or {})},
        )  # fmt: skip
        started.append((cluster, broker))
        return cluster.start()

    yield make
    for cluster, _ in started:
        cluster.stop()
