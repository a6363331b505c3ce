"""Project workspaces: cloned on a project's first call on a host, kept there by affinity,
re-homed with a fresh clone when the host dies (what it had not pushed is reported lost), and
every bad input a clear error. The per-project server is mcp-server-git, rooted at the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agents.conftest import run_client
from tests.conftest import ROOT, need

pytestmark = pytest.mark.e2e
GIT = {
    "command": sys.executable,
    "args": ["-m", "mcp_server_git", "--repository", "{workspace}"],
    "perProject": True,
}

LOG = """
import json, sys
from tasks import call_tool
r = call_tool.delay('git', 'git_log', {'repo_path': sys.argv[1]}, project_id=sys.argv[2]).get(timeout=60)
print(json.dumps([r['worker'], r['content'][0]['text'], r['is_error']]))
"""


def projects(cluster: Any) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "agentful"), "projects", "--json"], env=cluster.env, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def test_a_project_is_cloned_where_its_first_call_lands_and_rehomed_when_that_host_dies(
    agent_cluster: Any, repos: dict[str, Path], tmp_path: Path
) -> None:
    config = {"projects": {"repos": {name: {"git": str(path)} for name, path in repos.items()}}}
    # Two hosts: each worker its own workspaces root, as two machines would have.
    cluster = agent_cluster(servers={"git": GIT}, config=config, workers=2, env={"AGENTFUL_WORKSPACES": ""})
    roots = [tmp_path / "host0", tmp_path / "host1"]
    for i, w in enumerate(cluster.workers):  # restart each worker with its own root
        w.stop()
        w.env["AGENTFUL_WORKSPACES"] = str(roots[i])
        w.start()
    cluster.wait_ready()
    first = run_client(cluster, LOG, ".", "alpha")
    host = int(first[0].removeprefix("chaos").split("@")[0])
    assert not first[2] and "files" in first[1], first
    workspace = roots[host] / "alpha"
    assert (workspace / "secret.txt").read_text() == "alpha's secret\n"
    again = run_client(cluster, LOG, ".", "alpha")
    assert again[0] == first[0], "affinity keeps the project on its host"
    row = next(r for r in projects(cluster) if r["project"] == "alpha")
    assert row["node"] == cluster.node(host) and row["commit"] and not row["dirty"] and row["host_alive"]
    (workspace / "notes.txt").write_text("not committed, not pushed\n")  # work done there
    deadline = time.monotonic() + 20
    while not next(r for r in projects(cluster) if r["project"] == "alpha")["dirty"]:
        assert time.monotonic() < deadline, "calls never refreshed the project's record"
        run_client(cluster, LOG, ".", "alpha")  # a call refreshes the record (at most every 2 s)
        time.sleep(0.5)
    cluster.kill_worker(host)
    moved = run_client(cluster, LOG, ".", "alpha")
    assert moved[0] == cluster.node(1 - host) and not moved[2], moved
    assert (roots[1 - host] / "alpha" / "secret.txt").exists(), "a fresh clone on the new host"
    row = next(r for r in projects(cluster) if r["project"] == "alpha")
    assert row["node"] == cluster.node(1 - host) and row["moved_from"] == cluster.node(host)
    assert row["lost"] == "uncommitted changes", row


BAD = """
import json
from tasks import call_tool
from tasks.errors import AgentfulError
out = {}
for name, project in [('traversal', '../x'), ('absolute', '/abs'), ('none', None), ('unknown', 'nobody'),
                      ('broken', 'broken'), ('full', 'big')]:
    try:
        r = call_tool.delay('git', 'git_status', {'repo_path': '.'}, project_id=project).get(timeout=120)
        out[name] = ['ok', r['content'][0]['text'][:200]]
    except AgentfulError as exc:
        out[name] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def test_bad_projects_are_clear_errors(agent_cluster: Any, repos: dict[str, Path], tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root, to mount a small tmpfs (a full disk)")
    big = tmp_path / "big.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repos["alpha"]), str(big)], check=True)
    (tmp_path / "blob").write_bytes(os.urandom(3 * 1024 * 1024))
    work = tmp_path / "big-work"
    subprocess.run(["git", "clone", "-q", str(big), str(work)], check=True)
    (work / "blob.bin").write_bytes((tmp_path / "blob").read_bytes())
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    subprocess.run(["git", "add", "."], cwd=work, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "big"], cwd=work, check=True, env=env)
    subprocess.run(["git", "push", "-q"], cwd=work, check=True, env=env)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, check=False
    )
    need(mounted.returncode == 0, f"mount tmpfs ({mounted.stderr.decode().strip()})")
    try:
        config = {
            "projects": {
                "repos": {"broken": {"git": str(tmp_path / "no-such.git")}, "big": {"git": str(big)}}
            }
        }
        cluster = agent_cluster(servers={"git": GIT}, config=config, env={"AGENTFUL_WORKSPACES": str(small)})
        out = run_client(cluster, BAD)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert out["traversal"][0] == "InvalidOptionError" and "workspace directory" in out["traversal"][1]
    assert out["absolute"][0] == "InvalidOptionError"
    assert out["none"][0] == "InvalidOptionError" and "per project" in out["none"][1]
    assert out["unknown"][0] == "InvalidOptionError" and "not in the config's projects" in out["unknown"][1]
    assert out["broken"][0] == "WorkspaceError" and "does not exist" in out["broken"][1], out["broken"]
    assert out["full"][0] == "WorkspaceError" and "no space left" in out["full"][1].lower(), out["full"]


STATUS = """
import json, sys
from tasks import call_tool
for project in sys.argv[1:]:
    call_tool.delay('git', 'git_status', {'repo_path': '.'}, project_id=project).get(timeout=60)
print(json.dumps('ok'))
"""


def test_per_project_sessions_are_capped_and_stop_when_idle(
    agent_cluster: Any, repos: dict[str, Path]
) -> None:
    config = {"projects": {"repos": {name: {"git": str(path)} for name, path in repos.items()}}}
    git = {**GIT, "maxProjects": 1, "idleTimeoutS": 1}
    cluster = agent_cluster(servers={"git": git}, config=config)
    assert run_client(cluster, STATUS, "alpha", "beta") == "ok"
    log = cluster.tmp / "worker0.log"
    deadline = time.monotonic() + 20
    while True:
        text = log.read_text()
        if "for alpha stopped: the per-project cap" in text and "for beta stopped: idle for 1 s" in text:
            break
        assert time.monotonic() < deadline, "the cap and the idle stop never showed"
        time.sleep(0.5)
    assert run_client(cluster, STATUS, "alpha") == "ok", "a stopped project's session starts again"
