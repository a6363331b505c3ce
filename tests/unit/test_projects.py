"""The pure parts of agent work: project ids, the projects section, per-project specs, server
kinds, and the code generator's and agent runner's parsing."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from tasks.agents import check_run, summary
from tasks.config_file import ConfigFile, ServerSpec
from tasks.config_projects import ProjectsSection, check_project_id
from tasks.errors import InvalidArgumentsError, InvalidOptionError
from workers.project_sessions import fill, isolation_wrap_for
from workers.servers.codegen import extract_code, read_files, retry_after_s


@pytest.mark.parametrize("good", ["alpha", "a", "A1", "web-app", "my_proj.v2", "x" * 63])
def test_safe_project_ids(good: str) -> None:
    assert check_project_id(good) == good


@pytest.mark.parametrize(
    "bad", ["../x", "/abs", "a/b", "", ".hidden", "x" * 64, "a.", "-x", "a b", "é", None, 5]
)
def test_unsafe_project_ids_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="names the project's workspace directory"):
        check_project_id(bad)


def test_projects_named_or_by_pattern() -> None:
    section = ProjectsSection.model_validate(
        {
            "repos": {"alpha": {"git": "/srv/alpha.git", "branch": "main"}},
            "pattern": {"match": "team-[a-z]+", "git": "https://git.example/{project}.git"},
        }
    )
    alpha = section.source("alpha")
    assert alpha is not None and (alpha.git, alpha.branch) == ("/srv/alpha.git", "main")
    team = section.source("team-web")
    assert team is not None and team.git == "https://git.example/team-web.git"
    assert section.source("nobody") is None
    with pytest.raises(ValidationError, match="must contain"):
        ProjectsSection.model_validate({"pattern": {"match": ".*", "git": "/srv/fixed.git"}})
    with pytest.raises(ValidationError, match="not a regular expression"):
        ProjectsSection.model_validate({"pattern": {"match": "(", "git": "/{project}"}})
    with pytest.raises(ValidationError, match="workspace directory"):
        ProjectsSection.model_validate({"repos": {"../up": {"git": "/x"}}})


def test_claude_code_is_one_line_of_config() -> None:
    spec = ConfigFile.model_validate({"servers": {"claude": {"kind": "claude-code"}}}).servers["claude"]
    assert spec.per_project and spec.args == ["mcp", "serve"] and spec.cwd == "{workspace}"
    assert spec.env["HOME"] == "{home}" and spec.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    own = ConfigFile.model_validate(
        {"servers": {"claude": {"kind": "claude-code", "env": {"X": "1"}, "maxProjects": 2}}}
    ).servers["claude"]
    assert own.env["X"] == "1" and own.env["HOME"] == "{home}" and own.max_projects == 2


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"url": "http://x/mcp", "perProject": True}, "only for a stdio server"),
        ({"command": "x", "isolation": {"network": False}}, "only for a per-project server"),
    ],
)
def test_per_project_rules(raw: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        ServerSpec.model_validate(raw)


def test_agent_is_a_reserved_server_name() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        ConfigFile.model_validate({"servers": {"agent": {"command": "x"}}})


def test_placeholders_are_filled_per_project() -> None:
    spec = ServerSpec.model_validate(
        {
            "command": "srv",
            "args": ["--root", "{workspace}", "{project}"],
            "env": {"HOME": "{home}"},
            "perProject": True,
        }
    )
    concrete = fill(spec, project="alpha", workspace="/w/alpha", home="/w/.homes/alpha")
    assert concrete.args == ["--root", "/w/alpha", "alpha"]
    assert concrete.env == {"HOME": "/w/.homes/alpha"} and concrete.cwd == "/w/alpha"


def test_isolation_wraps_the_command() -> None:
    from tasks.config_projects import IsolationSection

    assert isolation_wrap_for(None, "a") == ([], None)
    wrap, user = isolation_wrap_for(IsolationSection(network=False, user="root"), "a")
    assert wrap[:3] == ["unshare", "--net", "--"] and user == "root"
    assert wrap[3] == "setpriv" and "--reuid=0" in wrap
    from tasks.errors import ServerStartError

    with pytest.raises(ServerStartError, match="not a user"):
        isolation_wrap_for(IsolationSection(user="agentful-nobody-{project}"), "a")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("```python\nprint(1)\n```\nThat prints one.", "print(1)"),
        ("Here:\n```\nx = 2\n```", "x = 2"),
        ("def f():\n    return 3\n", "def f():\n    return 3"),
    ],
)
def test_code_is_the_first_fenced_block(text: str, code: str) -> None:
    assert extract_code(text) == code


def test_retry_after() -> None:
    assert retry_after_s("3", 9) == 3.0
    assert retry_after_s(None, 9) == 9
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= retry_after_s(later, 9) <= 6
    assert retry_after_s("-4", 9) == 0.0


def test_files_must_be_inside_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    assert "--- a.py\nx = 1" in read_files(["a.py"], root=tmp_path, max_bytes=100)
    for bad in ("../etc/passwd", "/etc/passwd", "missing.py"):
        with pytest.raises(ToolError):
            read_files([bad], root=tmp_path, max_bytes=100)


def test_stream_events_become_progress_lines() -> None:
    assert (
        summary({"type": "system", "subtype": "init", "session_id": "s1", "model": "m"})
        == "session s1 started (m)"
    )
    tool = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}]},
    }
    assert summary(tool) == 'tool_use Bash: {"command": "ls"}'
    result = {
        "type": "user",
        "message": {"content": [{"type": "tool_result", "content": "a.txt", "is_error": False}]},
    }
    assert summary(result) == "tool_result: a.txt"
    assert (
        summary({"type": "result", "subtype": "success", "num_turns": 3}) == "result: success after 3 turns"
    )
    assert summary({"type": "stream_event"}) is None


@pytest.mark.parametrize(
    ("bound", "error"),
    [
        ({"prompt": "", "project_id": "a"}, InvalidArgumentsError),
        ({"prompt": "x" * 2000, "project_id": "a"}, InvalidArgumentsError),
        ({"prompt": "go"}, InvalidOptionError),
        ({"prompt": "go", "project_id": "../b"}, InvalidOptionError),
        ({"prompt": "go", "project_id": "a", "timeout_s": float("nan")}, InvalidOptionError),
        ({"prompt": "go", "project_id": "a", "max_turns": 0}, InvalidOptionError),
        ({"prompt": "go", "project_id": "a", "resume": ""}, InvalidOptionError),
    ],
)
def test_bad_runs_are_refused_before_they_are_queued(bound: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        check_run(bound, max_prompt_bytes=1024)
