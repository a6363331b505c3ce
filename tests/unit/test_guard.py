"""guarded_command: MCP servers run under a PR_SET_PDEATHSIG launcher on Linux."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from workers.guard import GUARD_SOURCE, guarded_command

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is Linux-only")


@linux_only
@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("uvx", ["mcp-server-git", "--repository", "/srv/repo"]),
        ("/usr/bin/node", []),
        ("server with spaces", ["--flag=a b", ""]),
    ],
)
def test_guarded_command_on_linux(command: str, args: list[str]) -> None:
    exe, argv = guarded_command(command, args)

    assert exe == sys.executable
    assert argv == ["-S", "-c", GUARD_SOURCE, str(os.getpid()), command, *args]


def test_guarded_command_elsewhere_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    args = ["-y", "@modelcontextprotocol/server-everything"]

    assert guarded_command("npx", args) == ("npx", args)


def test_guard_source_is_valid_python() -> None:
    compile(GUARD_SOURCE, "<guard>", "exec")


def run_guarded(command: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    exe, argv = guarded_command(command, args)
    return subprocess.run([exe, *argv], capture_output=True, text=True, timeout=20, check=False)


@linux_only
@pytest.mark.skipif(shutil.which("true") is None, reason="no `true` on PATH")
def test_guard_runs_the_command() -> None:
    result = run_guarded("true", [])

    assert result.returncode == 0
    assert result.stderr == ""


@linux_only
def test_guard_passes_arguments_and_exit_code_through() -> None:
    result = run_guarded(
        sys.executable, ["-S", "-c", "import sys; print(sys.argv[1:]); sys.exit(7)", "a b", ""]
    )

    assert result.returncode == 7
    assert result.stdout.strip() == "['a b', '']"


@linux_only
def test_guard_reports_a_missing_command() -> None:
    result = run_guarded("/nonexistent/bin/mcp-server", ["--x"])

    assert result.returncode != 0
    assert "cannot start MCP server '/nonexistent/bin/mcp-server'" in result.stderr
    assert "No such file or directory" in result.stderr


@linux_only
def test_guard_exits_quietly_when_its_parent_is_not_the_worker() -> None:
    """The worker died before the death signal was armed: the server must not start."""
    not_the_parent = str(os.getpid() + 1)  # the guard's real parent is this process
    argv = [
        sys.executable,
        "-S",
        "-c",
        GUARD_SOURCE,
        not_the_parent,
        sys.executable,
        "-c",
        "print('started')",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)

    assert result.returncode == 0
    assert result.stdout == ""
