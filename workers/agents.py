"""Headless agent runs: `claude -p --output-format stream-json` in a project's workspace.

One run is one process (its own process group, dying with the worker even on SIGKILL): Claude
Code with the project's workspace as cwd and its own home, its brain from `agents.brain` (any
Anthropic-compatible endpoint: GLM's, a proxy, a local model), the tools of `agents.allowedTools`
allowed without asking (it runs unattended), under `agents.isolation`. Every stream event is
passed on as progress (assistant text, tool use, tool result, ...); a cancelled run's process
group is ended; the result says what it answered, how it went (turns, tokens, cost), and what
it changed in the workspace (the diff against where it started, new commits, untracked files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil

from tasks.config_file import claude_command
from tasks.config_projects import AgentsSection
from tasks.errors import AgentRunError, ToolTimeoutError
from workers.guard import guarded_command
from workers.project_sessions import isolation_wrap_for, own_dir
from workers.workspaces import Workspaces

log = logging.getLogger(__name__)
EventFn = Callable[[dict[str, Any]], None]


def _git(workspace: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=workspace, capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def workspace_change(workspace: Path, before: str) -> dict[str, Any]:
    """What a run changed: commits since `before`, the diff (stat) against it, untracked files."""
    after = _git(workspace, "rev-parse", "HEAD")
    commits = _git(workspace, "log", "--format=%H %s", f"{before}..HEAD").splitlines() if before else []
    return {
        "before": before or None,
        "after": after or None,
        "commits": [{"sha": c.split(" ", 1)[0], "subject": c.split(" ", 1)[-1]} for c in commits],
        "diff_stat": _git(workspace, "diff", "--stat", before) if before else "",
        "untracked": _git(workspace, "ls-files", "--others", "--exclude-standard").splitlines(),
        "dirty": bool(_git(workspace, "status", "--porcelain")),
    }


class AgentRunner:
    def __init__(self, section: AgentsSection, workspaces: Workspaces, *, log_dir: Path) -> None:
        self.section = section
        self.workspaces = workspaces
        self.log_dir = log_dir

    def command(
        self, prompt: str, *, resume: str | None, model: str | None, max_turns: int | None
    ) -> list[str]:
        cmd = [
            self.section.command or claude_command(),
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        if self.section.allowed_tools:
            cmd += ["--allowedTools", ",".join(self.section.allowed_tools)]
        if resume:
            cmd += ["--resume", resume]
        if model or self.section.brain.model:
            cmd += ["--model", str(model or self.section.brain.model)]
        turns = max_turns or self.section.max_turns
        if turns:
            cmd += ["--max-turns", str(turns)]
        return cmd

    def environment(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFUL_", "ANTHROPIC_", "CELERY"))}
        env |= {"HOME": str(home), "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        brain = self.section.brain
        if brain.base_url:
            env["ANTHROPIC_BASE_URL"] = brain.base_url
        if brain.token_env:
            token = os.environ.get(brain.token_env)
            if not token:
                raise AgentRunError(
                    f"agents.brain.tokenEnv names {brain.token_env}, which is not set on this worker"
                )
            env["ANTHROPIC_AUTH_TOKEN"] = token
        if brain.model:
            env["ANTHROPIC_MODEL"] = brain.model
        env["CLAUDE_CODE_MAX_RETRIES"] = str(brain.max_retries)
        env["API_TIMEOUT_MS"] = str(int(brain.request_timeout_s * 1000))
        return env

    def run(
        self,
        project: str,
        prompt: str,
        *,
        resume: str | None = None,
        timeout_s: float | None = None,
        model: str | None = None,
        max_turns: int | None = None,
        on_event: EventFn | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        wrap, user = isolation_wrap_for(self.section.isolation, project)
        workspace = self.workspaces.ensure(project, owner=user)
        home = self.workspaces.home(project)
        home.mkdir(parents=True, exist_ok=True)
        if user is not None:
            own_dir(home, user)
        before = _git(workspace, "rev-parse", "HEAD")
        command, args = guarded_command(
            *_split(self.command(prompt, resume=resume, model=model, max_turns=max_turns))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        errlog = (self.log_dir / f"agent.{project}.{os.getpid()}.log").open(
            "a", encoding="utf-8", errors="replace"
        )
        started = time.monotonic()
        bound = timeout_s or self.section.timeout_s
        proc = subprocess.Popen(
            [*wrap, command, *args], cwd=workspace, env=self.environment(home), stdout=subprocess.PIPE,
            stderr=errlog, stdin=subprocess.DEVNULL, start_new_session=True, text=True,
        )  # fmt: skip
        events: list[dict[str, Any]] = []
        final: dict[str, Any] | None = None
        stop = _Watchdog(proc, bound, cancelled)
        try:
            assert proc.stdout is not None
            for event in _events(proc.stdout):
                events.append(event)
                if event.get("type") == "result":
                    final = event
                if on_event is not None:
                    on_event(event)
            proc.wait(timeout=30)
        finally:
            stop.done()
            errlog.close()
            if proc.poll() is None:
                _kill_group(proc)
        if stop.why == "timeout":
            raise ToolTimeoutError(
                f"agent run in {project!r} did not finish within {bound:g} s; it was stopped"
            )
        if stop.why == "cancelled":
            from celery.exceptions import TaskRevokedError

            raise TaskRevokedError(f"agent run in {project!r} was cancelled; its process group was ended")
        if final is None:
            tail = _tail(self.log_dir / f"agent.{project}.{os.getpid()}.log")
            raise AgentRunError(
                f"claude exited with {proc.returncode} without a result" + (f": {tail}" if tail else "")
            )
        return {
            "project": project,
            "session_id": final.get("session_id"),
            "result": final.get("result"),
            "is_error": bool(final.get("is_error")) or final.get("subtype") != "success",
            "subtype": final.get("subtype"),
            "num_turns": final.get("num_turns"),
            "usage": final.get("usage") or {},
            "total_cost_usd": final.get("total_cost_usd"),
            "duration_s": round(time.monotonic() - started, 3),
            "exit_code": proc.returncode,
            "events": len(events),
            "workspace": workspace_change(workspace, before),
        }


def _split(cmd: list[str]) -> tuple[str, list[str]]:
    return cmd[0], cmd[1:]


def _events(stream: IO[str]) -> Any:
    for raw in stream:
        line = raw.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("agent run printed a line that is not JSON: %r", line[:200])
            continue
        if isinstance(event, dict):
            yield event


def _tail(path: Path, max_bytes: int = 600) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return " | ".join(
                line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()
            )
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the run: its process group, and every process it started (Claude Code starts its
    tools' shells in sessions of their own, which a group signal misses)."""
    try:
        spawned = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        spawned = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for child in spawned:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        try:
            proc.wait(timeout=5)
            psutil.wait_procs(spawned, timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


class _Watchdog:
    """Ends the run's process group when it runs past its bound or is cancelled."""

    def __init__(
        self, proc: subprocess.Popen[str], bound_s: float, cancelled: Callable[[], bool] | None
    ) -> None:
        self.proc = proc
        self.why: str | None = None
        self._done = threading.Event()
        self._deadline = time.monotonic() + bound_s
        self._cancelled = cancelled
        threading.Thread(target=self._watch, name="agentful-agent-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            if time.monotonic() > self._deadline:
                self.why = "timeout"
            elif self._cancelled is not None and self._cancelled():
                self.why = "cancelled"
            if self.why is not None:
                _kill_group(self.proc)
                return

    def done(self) -> None:
        self._done.set()
