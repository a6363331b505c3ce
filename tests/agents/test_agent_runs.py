"""Headless agent runs as durable tasks: the real `claude -p --output-format stream-json` (from
npm) in a project's workspace, with a scripted Anthropic endpoint standing in for the model only
(cli/scripted_model.py: no package ships a model that speaks the Messages API here).
Claude Code itself runs the tools (Bash, Write): the workspace really changes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.agents.conftest import run_client, scripted_endpoint
from tests.chaos.brokers import free_port, wait_port
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
COMMIT = "git -c user.name=agent -c user.email=agent@e.invalid commit -qm"


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Any]:
    """The scripted endpoint: `model(turns)` (re)writes its script, returns its URL."""
    script = tmp_path / "script.json"
    with scripted_endpoint("cli.scripted_model", script, tmp_path / "model.log") as (url, write):

        def turns(items: list[dict[str, Any]]) -> str:
            write(items)
            return str(url)

        turns.script = script  # type: ignore[attr-defined]
        yield turns


def agents_config(claude: str, repos: dict[str, Path], base_url: str, **agents: Any) -> dict[str, Any]:
    return {
        "projects": {"repos": {name: {"git": str(path)} for name, path in repos.items()}},
        "agents": {
            "enabled": True,
            "command": claude,
            "brain": {"baseUrl": base_url, "tokenEnv": "AGENT_TOKEN", "model": "glm-4.6", "maxRetries": 0},
            **agents,
        },
    }


RUN = """
import json, sys
from tasks import run_agent
from tasks.progress import follow
r = run_agent.delay(sys.argv[1], project_id='alpha')
events = [e['message'] for e in follow(r, timeout_s=120)]
first = r.get(timeout=120)
again = run_agent.delay('and now?', project_id='alpha', resume=first['session_id']).get(timeout=120)
print(json.dumps({'first': first, 'events': events, 'again': again}))
"""


def test_a_run_changes_the_workspace_streams_progress_and_resumes(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any, tmp_path: Path
) -> None:
    command = f"echo hello > hello.txt && git add hello.txt && {COMMIT} 'add hello'"
    url = model([
        {"tool": "Bash", "input": {"command": command, "description": "add a file"}},
        {"text": "Added hello.txt and committed it."},
    ])  # fmt: skip
    cluster = agent_cluster(
        servers={}, config=agents_config(claude, repos, url), env={"AGENT_TOKEN": "t0k3n"}
    )
    out = run_client(cluster, RUN, "add a hello file")
    first = out["first"]
    assert first["result"] == "Added hello.txt and committed it." and not first["is_error"], first
    assert first["num_turns"] == 2 and first["session_id"] and first["exit_code"] == 0
    assert [c["subject"] for c in first["workspace"]["commits"]] == ["add hello"]
    assert "hello.txt" in first["workspace"]["diff_stat"]
    assert first["usage"]["input_tokens"] > 0 and first["worker"] == cluster.node(0)
    assert (tmp_path / "workspaces" / "alpha" / "hello.txt").read_text() == "hello\n"
    events = out["events"]
    assert any(e.startswith("session ") for e in events)
    assert any(e.startswith("tool_use Bash") for e in events) and any("tool_result" in e for e in events)
    assert out["again"]["session_id"] == first["session_id"], "resume continues the same session"
    requests = [json.loads(line) for line in Path(str(model.script) + ".requests").read_text().splitlines()]
    assert requests[-1]["turn"] == 2, "the resumed run sent the first run's history"
    for log in cluster.tmp.rglob("*.log"):  # the brain's token reaches no log
        assert "t0k3n" not in log.read_text(errors="replace"), log


CANCEL = """
import json, sys, time
from tasks import run_agent
from tasks.api import cancel_call
from tasks.progress import follow
from celery.exceptions import TaskRevokedError
r = run_agent.delay('sleep a while', project_id='alpha')
for event in follow(r, timeout_s=60):
    if (event['message'] or '').startswith('tool_use Bash'):
        time.sleep(1)
        cancel_call(r.id)
        break
try:
    r.get(timeout=60)
    print(json.dumps('finished'))
except TaskRevokedError as exc:
    print(json.dumps('revoked: ' + str(exc)))
"""


def test_a_run_cancelled_mid_tool_use_ends_its_process_group(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any
) -> None:
    url = model(
        [{"tool": "Bash", "input": {"command": "sleep 47.5", "description": "wait"}}, {"text": "done"}]
    )
    cluster = agent_cluster(servers={}, config=agents_config(claude, repos, url), env={"AGENT_TOKEN": "x"})
    assert run_client(cluster, CANCEL).startswith("revoked")
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "sleep 47.5"], capture_output=True, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the cancelled run's tool process is still running"
        time.sleep(0.2)


FAILS = """
import json, sys
from tasks import run_agent
from tasks.errors import AgentfulError
out = {}
cases = {'bad': ('hello', {}), 'timeout': ('slow', {'timeout_s': 3})}
for name in sys.argv[1:]:
    prompt, kw = cases[name]
    try:
        r = run_agent.delay(prompt, project_id='alpha', **kw).get(timeout=120)
        out[name] = [r['is_error'], r['result']]
    except AgentfulError as exc:
        out[name] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("turns", "expect"),
    [
        ([{"error": 529, "message": "overloaded"}], "529"),
        ([{"garbage": True}], "API Error"),
        ("down", "Unable to connect"),
    ],
    ids=["overloaded", "garbage", "down"],
)
def test_a_failing_model_endpoint_is_a_clear_error(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any, turns: Any, expect: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if turns == "down" else model(turns)
    cluster = agent_cluster(servers={}, config=agents_config(claude, repos, url), env={"AGENT_TOKEN": "x"})
    out = run_client(cluster, FAILS, "bad")
    assert out["bad"][0] is True and expect in out["bad"][1], out


def test_a_slow_model_runs_into_the_runs_timeout(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any
) -> None:
    url = model([{"sleep": 30, "text": "late"}])
    cluster = agent_cluster(servers={}, config=agents_config(claude, repos, url), env={"AGENT_TOKEN": "x"})
    out = run_client(cluster, FAILS, "timeout")
    assert out["timeout"][0] == "ToolTimeoutError" and "within 3 s" in out["timeout"][1], out


BAD = """
import json
from tasks import run_agent
from tasks.errors import AgentfulError
out = []
for prompt, kw in [('x' * 300_000, {'project_id': 'alpha'}), ('hi', {'project_id': '../beta'}),
                   ('hi', {'project_id': '/abs'}), ('hi', {}), ('', {'project_id': 'alpha'})]:
    try:
        run_agent.delay(prompt, **kw)
        out.append('queued')
    except AgentfulError as exc:
        out.append(type(exc).__name__)
print(json.dumps(out))
"""


def test_bad_runs_are_refused_before_they_are_queued(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any
) -> None:
    cluster = agent_cluster(servers={}, config=agents_config(claude, repos, model([{"text": "x"}])))
    assert run_client(cluster, BAD) == [
        "InvalidArgumentsError", "InvalidOptionError", "InvalidOptionError", "InvalidOptionError",
        "InvalidArgumentsError",
    ]  # fmt: skip


LOST = """
import json, sys, time
from tasks import run_agent
from tasks.progress import follow
from tasks.errors import AgentfulError
r = run_agent.delay('a long job', project_id='alpha')
for event in follow(r, timeout_s=60):
    if (event['message'] or '').startswith('tool_use Bash'):
        print(json.dumps('started'), flush=True)
        break
try:
    print(json.dumps(['done', r.get(timeout=120)['worker']]))
except AgentfulError as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""


def test_a_run_whose_worker_dies_fails_clearly_and_is_not_run_twice(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran.txt"
    work = {"command": f"echo run >> {marker}; sleep 20", "description": "work"}
    url = model([{"tool": "Bash", "input": work}, {"text": "done"}])
    cluster = agent_cluster(
        servers={}, config=agents_config(claude, repos, url), workers=2, env={"AGENT_TOKEN": "x"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", LOST], env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == "started"
    deadline = time.monotonic() + 30
    while not marker.exists():  # the tool ran: the run is inside its worker now
        assert time.monotonic() < deadline, "the run's tool never ran"
        time.sleep(0.1)
    cluster.kill_worker(_runner_of(cluster))
    out = json.loads(proc.stdout.readline())
    proc.wait(timeout=30)
    assert out[0] == "AgentRunLostError" and "died mid-run" in out[1], out
    assert marker.read_text().count("run") == 1, "the run was not started a second time"


def _runner_of(cluster: Any) -> int:
    """Which worker took the run (its log says it received it)."""
    for i, _ in enumerate(cluster.workers):
        if "agentful.run_agent" in (cluster.tmp / f"worker{i}.log").read_text():
            return i
    raise AssertionError("no worker received the run")


def test_mcp_clients_run_agents_through_the_gateway(
    agent_cluster: Any, claude: str, repos: dict[str, Path], model: Any, tmp_path: Path
) -> None:
    """`agent__run` on the gateway: the project from the call's `_meta`, progress to the client,
    the run's answer as text and the whole run as structured content."""
    import anyio
    import mcp

    url = model([
        {"tool": "Bash", "input": {"command": "echo gw > gw.txt", "description": "write"}},
        {"text": "Wrote gw.txt."},
    ])  # fmt: skip
    cluster = agent_cluster(servers={}, config=agents_config(claude, repos, url), env={"AGENT_TOKEN": "x"})
    port = free_port()
    gateway = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "agentful"), "gateway", "--port", str(port)], env=cluster.env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "gateway.log").open("ab"),
    )  # fmt: skip
    try:
        wait_port(port, 60, gateway)
        endpoint = f"http://127.0.0.1:{port}/mcp"
        seen: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(message or "")

        async def go() -> Any:
            async with mcp.Client(endpoint, mode="legacy", read_timeout_seconds=120) as c:
                deadline = time.monotonic() + 60
                names: list[str] = []
                while "agent__run" not in names:
                    assert time.monotonic() < deadline, names
                    names = [t.name for t in (await c.list_tools()).tools]
                    await anyio.sleep(0.3)
                return await c.call_tool(
                    "agent__run", {"prompt": "write gw.txt"}, progress_callback=on_progress,
                    meta=cast("Any", {"agentful/project": "alpha"}),
                )  # fmt: skip

        result = anyio.run(go)
        assert not result.is_error, result
        assert result.content[0].text == "Wrote gw.txt."
        assert result.structured_content["workspace"]["untracked"] == ["gw.txt"]
        assert any(m.startswith("tool_use Bash") for m in seen), seen
        assert (tmp_path / "workspaces" / "alpha" / "gw.txt").read_text() == "gw\n"
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
