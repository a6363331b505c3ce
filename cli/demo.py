"""The main job, end to end: a local cluster of real MCP servers and a batch of real calls.

Embedded broker, two Celery workers each holding sessions to mcp-server-time, mcp-server-git
(on a scratch repository) and server-everything (when Node is there), a batch submitted with
`.delay()`, a progress bar while results arrive, and a summary per worker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.settings import get_settings, reset_caches

console = Console()
ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = Path("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
TIMEZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "Africa/Cairo"]


def _everything_entry() -> Path | None:
    """server-everything's entry point; installed with `npm ci` at the project root if missing."""
    if shutil.which("node") is None:
        return None
    for base in (Path.cwd(), ROOT):
        if (base / EVERYTHING).exists():
            return (base / EVERYTHING).resolve()
    if shutil.which("npm") and (ROOT / "package.json").exists():
        console.print("[dim]installing server-everything with npm (once)...")
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, capture_output=True, check=False
        )
        if done.returncode == 0 and (ROOT / EVERYTHING).exists():
            return (ROOT / EVERYTHING).resolve()
        console.print(f"[yellow]npm ci failed; demo runs without server-everything: {done.stderr[-300:]!r}")
    return None


def _scratch_repo(path: Path) -> Path | None:
    if shutil.which("git") is None:
        return None
    if not (path / ".git").exists():
        path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid"}
        env |= {"GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}
        subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
        for i in range(3):
            (path / f"note-{i}.txt").write_text(f"note {i}\n")
            subprocess.run(["git", "add", "."], cwd=path, check=True, env=env)
            subprocess.run(["git", "commit", "-q", "-m", f"note {i}"], cwd=path, check=True, env=env)
        (path / "untracked.txt").write_text("not committed\n")
    return path


def demo_config(workdir: Path) -> dict[str, Any]:
    """The demo's servers: real third-party MCP servers that run offline."""
    servers: dict[str, Any] = {}
    if importlib.util.find_spec("mcp_server_time"):
        servers["time"] = {
            "command": sys.executable,
            "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        }
    repo = _scratch_repo(workdir / "repo") if importlib.util.find_spec("mcp_server_git") else None
    if repo is not None:
        servers["git"] = {
            "command": sys.executable,
            "args": ["-m", "mcp_server_git", "--repository", str(repo)],
        }
    entry = _everything_entry()
    if entry is not None:
        servers["everything"] = {"command": "node", "args": [str(entry), "stdio"]}
    return {"servers": servers, "_repo": str(repo) if repo else None}


def workload(n: int, servers: set[str], repo: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """A mixed batch of n real calls over the servers present."""
    kinds: list[Any] = []
    if "time" in servers:
        kinds.append(lambda i: ("time", "get_current_time", {"timezone": TIMEZONES[i % len(TIMEZONES)]}))
        kinds.append(
            lambda i: (
                "time",
                "convert_time",
                {"source_timezone": "UTC", "time": f"{i % 24:02d}:30", "target_timezone": TIMEZONES[i % 6]},
            )
        )
    if "git" in servers and repo:
        kinds.append(lambda i: ("git", "git_status", {"repo_path": repo}))
        kinds.append(lambda i: ("git", "git_log", {"repo_path": repo, "max_count": 2}))
    if "everything" in servers:
        kinds.append(lambda i: ("everything", "echo", {"message": f"hello {i}"}))
        kinds.append(lambda i: ("everything", "get-sum", {"a": i, "b": 2}))
    return [kinds[i % len(kinds)](i) for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def run_batch(calls: list[tuple[str, str, dict[str, Any]]], timeout_s: float) -> list[dict[str, Any]]:
    """Submit every call with .delay(), show progress, return one record per call."""
    from celery.result import ResultSet

    from tasks import call_tool

    records: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        submitted = progress.add_task("submitting", total=len(calls))
        results = []
        for server, tool, args in calls:
            r = call_tool.delay(server, tool, args)
            records[r.id] = {"server": server, "tool": tool, "sent": time.perf_counter()}
            results.append(r)
            progress.advance(submitted)
        done = progress.add_task("completed ", total=len(calls))

        def on_result(task_id: str, value: Any) -> None:
            rec = records[task_id]
            rec["latency_ms"] = (time.perf_counter() - rec["sent"]) * 1000
            if isinstance(value, dict):
                rec |= {"worker": value.get("worker", "?"), "error": bool(value.get("is_error"))}
                rec["run_ms"] = float(value.get("duration_ms") or 0.0)
            else:
                rec |= {"worker": "?", "error": True, "exception": f"{type(value).__name__}: {value}"}
            progress.advance(done)

        ResultSet(results).join_native(timeout=timeout_s, propagate=False, callback=on_result)
    return list(records.values())


def summary(records: list[dict[str, Any]], elapsed_s: float, flower_url: str | None) -> Table:
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_worker[rec.get("worker", "?")].append(rec)
    table = Table(
        title=f"{len(records)} MCP tool calls in {elapsed_s:.2f} s ({len(records) / elapsed_s:.0f} calls/s)"
    )
    columns = ("worker", "calls", "p50 ms", "p99 ms", "on worker p50 ms", "errors")
    for col in columns:
        table.add_column(col, justify="left" if col == "worker" else "right")
    rows = sorted(by_worker.items())
    for worker, recs in [*rows, ("all", records)]:
        lat = [r["latency_ms"] for r in recs if "latency_ms" in r]
        run = [r["run_ms"] for r in recs if "run_ms" in r]
        errors = sum(1 for r in recs if r.get("error"))
        cells = (f"{_pct(lat, 50):.1f}", f"{_pct(lat, 99):.1f}", f"{_pct(run, 50):.1f}")
        table.add_row(worker, str(len(recs)), *cells, str(errors))
    table.caption = "p50/p99: from .delay() to the result, queueing included; on worker: the MCP call itself"
    if flower_url:
        table.caption += f"\nFlower: {flower_url}"
    return table


def run_demo(
    calls: int, workers: int, flower: bool, keep: bool, timeout_s: float, *, agents: bool = False
) -> int:
    """The demo; returns the number of failed calls (0 is success)."""
    from cli.demo_agents import AgentDemo
    from cli.stack import Stack

    workdir = get_settings().data_dir / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    config = demo_config(workdir)
    repo = config.pop("_repo")
    if not config["servers"]:
        console.print("[red]no demo MCP server is installed: pip install 'agentful-mcp[peers]'")
        return 1
    agent_demo = AgentDemo(workdir) if agents else None
    if agent_demo is not None:
        why = agent_demo.configure(config, console)
        if why is not None:
            console.print(f"[red]--agents: {why}")
            return 1
    path = workdir / "config.json"  # the demo runs its own servers, whatever AGENTFUL_CONFIG says
    path.write_text(json.dumps(config, indent=2))
    os.environ["AGENTFUL_CONFIG"] = str(path)
    os.environ.pop("AGENTFUL_SERVERS", None)
    reset_caches()
    servers = set(config["servers"]) - {"codegen"}  # the tool batch; code generation is agent work
    stack = Stack(workers=workers, flower=flower, beat=False, name_prefix="demo")
    console.print(
        f"[bold]agentful demo[/]: servers {', '.join(sorted(servers))}; starting broker and {workers} workers"
    )
    try:
        stack.start()
        console.print(f"broker: {stack.broker_url}" + (" (embedded Valkey)" if stack.broker else ""))
        if not stack.wait_ready(90):
            console.print(f"[red]workers did not come up; see their logs in {get_settings().log_dir}")
            return 1
        from tasks import call_tool

        for server in sorted(servers):  # every session is up before the clock starts
            tool, args = workload(1, {server}, repo)[0][1:]
            call_tool.delay(server, tool, args).get(timeout=60)
        batch = workload(calls, servers, repo)
        started = time.perf_counter()
        records = run_batch(batch, timeout_s)
        console.print(summary(records, time.perf_counter() - started, stack.flower_url if flower else None))
        failures = [r for r in records if r.get("error")]
        for rec in failures[:5]:
            console.print(f"[red]{rec['server']}/{rec['tool']}: {rec.get('exception', 'tool error')}")
        failed = len(failures) + (agent_demo.run(console, timeout_s) if agent_demo is not None else 0)
        if keep:
            console.print("cluster running; Ctrl-C to stop")
            while not stack.dead():
                time.sleep(1)
        return failed
    except KeyboardInterrupt:
        return 130
    finally:
        console.print("[dim]stopping workers, Flower and the broker...")
        stack.stop()
        if agent_demo is not None:
            agent_demo.stop()
