"""Claude Code (the real one, from npm) as a host's tool server, one session per project:
project A's Bash and Read cannot reach project B's files, one project's session state (the read
cache: a second Read of an unchanged file answers `file_unchanged`) never reaches another, and
a call without a project is refused before it is queued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agents.conftest import run_client

pytestmark = pytest.mark.e2e

CALLS = """
import json, sys
from tasks import call_tool
from tasks.errors import AgentfulError
ws = sys.argv[1]
def call(project, tool, args):
    r = call_tool.delay('claude', tool, args, project_id=project).get(timeout=180)
    return [r['content'][0]['text'] if r['content'] else '', r['is_error']]
out = {}
out['a1'] = call('alpha', 'Read', {'file_path': ws + '/alpha/secret.txt'})
out['a2'] = call('alpha', 'Read', {'file_path': ws + '/alpha/secret.txt'})
out['b1'] = call('beta', 'Read', {'file_path': ws + '/beta/secret.txt'})
out['b_reads_a'] = call('beta', 'Read', {'file_path': ws + '/alpha/secret.txt'})
out['b_bash_a'] = call('beta', 'Bash', {'command': 'cat ../alpha/secret.txt; echo; id -un; pwd'})
out['net'] = call('alpha', 'Bash', {'command': "tail -n +3 /proc/net/dev | cut -d: -f1"})
for name, project in (('no_project', None), ('bad_project', '../beta')):
    try:
        call_tool.delay('claude', 'Read', {'file_path': '/x'}, project_id=project)
        out[name] = 'queued'
    except AgentfulError as exc:
        out[name] = type(exc).__name__ + ': ' + str(exc)
print(json.dumps(out))
"""


def test_claude_code_sessions_are_per_project_and_isolated(
    agent_cluster: Any, claude: str, project_users: tuple[str, ...], repos: dict[str, Path], tmp_path: Path
) -> None:
    servers = {
        "claude": {
            "kind": "claude-code",
            "command": claude,
            "isolation": {"user": "agentful-{project}", "network": False},
            "callTimeoutS": 120,
        }
    }
    config = {"projects": {"repos": {name: {"git": str(path)} for name, path in repos.items()}}}
    cluster = agent_cluster(servers=servers, config=config)
    ws = tmp_path / "workspaces"
    out = run_client(cluster, CALLS, str(ws))
    assert "alpha's secret" in out["a1"][0] and not out["a1"][1], out["a1"]
    assert json.loads(out["a2"][0])["type"] == "file_unchanged", "alpha's own read cache"
    assert "beta's secret" in out["b1"][0], "beta's session has its own state: no file_unchanged leaked"
    assert "alpha's secret" not in out["b_reads_a"][0], out["b_reads_a"]
    bash = out["b_bash_a"][0]
    assert "alpha's secret" not in bash and "Permission denied" in bash, bash
    assert "agentful-beta" in bash and str(ws / "beta") in bash, bash
    interfaces = json.loads(out["net"][0])["stdout"].split()
    assert interfaces == ["lo"], f"no network but loopback (unshare -n), got {interfaces}"
    assert out["no_project"].startswith("InvalidOptionError") and "per project" in out["no_project"]
    assert out["bad_project"].startswith("InvalidOptionError") and "workspace directory" in out["bad_project"]
    # The workspaces are the projects' users' own.
    assert (ws / "alpha").stat().st_mode & 0o777 == 0o700
