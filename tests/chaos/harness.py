"""The chaos tier's cluster: a real broker process, real `celery worker` groups and beat, the
ledger MCP server, a driver program that submits with `.delay()`, and the faults.

Outcomes are counted from the ledger the MCP server writes (every real execution, fsynced) and
from what the driver got back, never from what the cluster says of itself:
- lost: accepted by `.delay()`, and no SUCCESS by the deadline, or a SUCCESS that never ran;
- duplicated: a key that ran again after an earlier execution of it had ended, unless that
  earlier one was in the window;
- in the window: a key that ran again while an earlier execution had not ended, or whose earlier
  execution was one the faulted worker had sent to its MCP server before the fault (it was in
  flight there, its result not stored, when its worker was declared dead: the one window
  docs/reliability.md names). The MCP server runs in a session of its own (the SDK starts it
  so): a SIGSTOP or SIGKILL of the worker's group does not reach it, and it goes on with what it
  was sent. So what the faulted worker's servers started up to `sent_before` was sent before the
  fault: while the worker was stopped (until its SIGCONT), or before it died (a dead worker's
  servers only finish what they were sent);
- recovery_s: the fault to the last completion of a call of the faulted worker's projects (those
  it had answered calls of before the fault; with no faulted worker, of any call): failover plus
  the time the survivors take to work through those projects' backlog;
- failover_s: the fault to the first execution of a call of those projects by another worker
  (the dead worker detected, fenced, and its calls handed on); None without a faulted worker;
- window_done_s: the fault to the last completion of a call in the window (the calls the faulted
  worker was running: each ran again elsewhere); None with an empty window. recovery_s also
  waits for the faulted worker's share of the backlog, which the survivors work through.
Used by tests/chaos and by bench/chaos.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.chaos.brokers import BrokerProcess
from workers.launcher import WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
LEDGER_SERVER = ROOT / "bench" / "ledger_server.py"


@dataclass
class Outcome:
    calls: int
    accepted: int
    lost: int
    duplicated: int
    in_window: int
    recovery_s: float
    executions: int
    failover_s: float | None = None
    window_done_s: float | None = None
    last_done: float = 0.0  # wall time of the last completion of any call
    lost_keys: list[str] = field(default_factory=list)
    duplicated_keys: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "accepted": self.accepted,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "in_window": self.in_window,
            "recovery_s": round(self.recovery_s, 3),
            "failover_s": None if self.failover_s is None else round(self.failover_s, 3),
            "window_done_s": None if self.window_done_s is None else round(self.window_done_s, 3),
            "executions": self.executions,
            "states": self.states,
            "lost_keys": self.lost_keys[:10],
            "duplicated_keys": self.duplicated_keys[:10],
        }


def read_ledger(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def analyse(
    ledger: list[dict[str, Any]],
    outcome: dict[str, dict[str, Any]],
    fault_at: float,
    victim_pids: frozenset[int] = frozenset(),
    victim: str | None = None,
    sent_before: float | None = None,
) -> Outcome:
    """`sent_before`: until when an execution the victim's servers started was sent to them
    before the fault (default: `fault_at`)."""
    sent_by = fault_at if sent_before is None else sent_before
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, int, str | None, int | None], float] = {}
    for line in ledger:
        ident = (line["key"], line["pid"], line.get("task"), line.get("attempt"))
        if line["ev"] == "start":
            runs[line["key"]].append(line)
        elif line["ev"] == "end":
            ends[ident] = line["t"]
    duplicated, window = [], []
    for key, starts in runs.items():
        if len(starts) < 2:
            continue
        starts.sort(key=lambda s: s["t"])
        sequential = False
        for i, later in enumerate(starts[1:], 1):
            for earlier in starts[:i]:
                end = ends.get((key, earlier["pid"], earlier.get("task"), earlier.get("attempt")))
                in_flight_at_fault = earlier["pid"] in victim_pids and earlier["t"] <= sent_by
                if end is not None and end <= later["t"] and not in_flight_at_fault:
                    sequential = True
        if sequential:
            duplicated.append(key)
        else:
            window.append(key)
    accepted = {k: v for k, v in outcome.items() if v["state"] != "REFUSED"}
    lost = sorted(k for k, v in accepted.items() if v["state"] != "SUCCESS" or k not in runs)
    states: dict[str, int] = defaultdict(int)
    for v in outcome.values():
        states[v["state"]] += 1
    mine = {v.get("project") for v in accepted.values() if victim and v.get("worker") == victim}
    done = [
        v["t_done"] for v in accepted.values() if "t_done" in v and (not mine or v.get("project") in mine)
    ]
    taken_over = [
        s["t"] - fault_at
        for key, starts in runs.items()
        for s in starts
        if s["t"] > fault_at and s["pid"] not in victim_pids and outcome.get(key, {}).get("project") in mine
    ]
    return Outcome(
        calls=len(outcome),
        accepted=len(accepted),
        lost=len(lost),
        duplicated=len(duplicated),
        in_window=len(window),
        recovery_s=max((t - fault_at for t in done if t > fault_at), default=0.0),
        executions=sum(len(s) for s in runs.values()),
        failover_s=min(taken_over) if mine and taken_over else None,
        window_done_s=max(
            (outcome[k]["t_done"] - fault_at for k in window if "t_done" in outcome.get(k, {})), default=None
        ),
        last_done=max((v["t_done"] for v in accepted.values() if "t_done" in v), default=0.0),
        lost_keys=lost,
        duplicated_keys=sorted(duplicated),
        states=dict(states),
    )


def runs_of(
    ledger: list[dict[str, Any]], keys: list[str], fault_at: float, victim_pids: frozenset[int]
) -> dict[str, list[str]]:
    """For a failed assertion: each execution of `keys`, its time from the fault, and whose."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in ledger:
        if line["key"] in keys and line["ev"] in ("start", "end", "skip"):
            who = "victim" if line["pid"] in victim_pids else "other"
            out[line["key"]].append(
                f"{line['ev']} {line['t'] - fault_at:+.3f}s pid {line['pid']} ({who}) "
                f"attempt {line.get('attempt')} task {line.get('task')}"
            )
    return dict(out)


# Programs that wait for a cluster of ledger workers: argv is the timeout, then the nodes.
OWN_QUEUE_CALLS = """
import json, sys
from tasks import call_tool
timeout, nodes = float(sys.argv[1]), sys.argv[2:]
rs = [call_tool.apply_async(('ledger', 'work', {'key': 'warm', 'seconds': 0}), queue='worker.' + n)
      for n in nodes]
got = sorted(r.get(timeout=timeout)['worker'] for r in rs)
print(json.dumps(got))
sys.exit(0 if got == sorted(nodes) else f'answered by {got}, not {sorted(nodes)}')
"""
REGISTRY_READY = """
import json, sys, time
from tasks.api import catalog_store
from tasks.registry import Registry
from tasks.router import views
timeout, want = float(sys.argv[1]), set(sys.argv[2:])
reg = Registry(catalog_store().url)
def ready():  # as the router sees them: its session up and healthy
    return {w.node for w in views(reg.alive(), 'ledger') if w.healthy}
deadline = time.monotonic() + timeout
while time.monotonic() < deadline and not want <= ready():
    time.sleep(0.2)
print(json.dumps(sorted(ready())))
sys.exit(0 if want <= ready() else f'not in the registry as healthy: {sorted(want - ready())}')
"""


class ChaosCluster:
    """A broker, N workers (threads pool) running the ledger server, optionally beat."""

    def __init__(
        self,
        tmp: Path,
        broker: BrokerProcess,
        *,
        backend_url: str | None = None,
        workers: int = 3,
        concurrency: int = 16,
        beat: bool = False,
        dedupe: bool = False,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        servers: dict[str, Any] | None = None,
    ) -> None:
        """`servers`: more servers beside the ledger (every worker runs them all); `config`:
        more top-level sections of the config file (projects, agents, ...)."""
        self.tmp = tmp
        self.broker = broker
        self.backend_url = backend_url
        self.n = workers
        self.concurrency = concurrency
        self.with_beat = beat
        self.ledger = tmp / "ledger.txt"
        self.workers: list[WorkerProcess] = []
        self.beat: subprocess.Popen[bytes] | None = None
        server_env = {"LEDGER_FILE": str(self.ledger), **({"LEDGER_DEDUPE": "1"} if dedupe else {})}
        ledger = {"command": sys.executable, "args": [str(LEDGER_SERVER)], "env": server_env}
        self.config: dict[str, Any] = {**(config or {}), "servers": {"ledger": ledger, **(servers or {})}}
        self.extra_env = env or {}

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "AGENTFUL_BROKER_URL": self.broker.url,
            "AGENTFUL_CONFIG": str(self.tmp / "config.json"),
            "AGENTFUL_DATA_DIR": str(self.tmp / "data"),
            **self.extra_env,
        }
        env.pop("AGENTFUL_RESULT_BACKEND", None)
        if self.backend_url:
            env["AGENTFUL_RESULT_BACKEND"] = self.backend_url
        return env

    def node(self, i: int) -> str:
        return f"chaos{i}@{os.uname().nodename}"

    def start(self) -> ChaosCluster:
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.tmp / "config.json").write_text(json.dumps(self.config))
        self.workers = [self.start_worker(i) for i in range(self.n)]
        if self.with_beat:
            self.start_beat()
        self.wait_ready()
        return self

    def start_worker(self, i: int) -> WorkerProcess:
        return WorkerProcess(
            f"chaos{i}@%h",
            list(self.config["servers"]),
            env=self.env,
            concurrency=self.concurrency,
            log_path=self.tmp / f"worker{i}.log",
        ).start()

    def start_beat(self) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(self.tmp / "beat-schedule")]
        log = (self.tmp / "beat.log").open("ab")
        self.beat = subprocess.Popen([*cmd, "-l", "INFO"], env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Every worker answers a call on its own queue (its session to the ledger is up), and
        the registry shows it healthy: until then the router gives it no project, and on a busy
        box a batch submitted earlier went to one worker alone."""
        out = self.tmp / "warm.json"
        nodes = [self.node(i) for i in range(self.n)]
        for code in (OWN_QUEUE_CALLS, REGISTRY_READY):
            done = subprocess.run(
                [sys.executable, "-c", code, str(timeout_s), *nodes], env=self.env, cwd=ROOT,
                capture_output=True, text=True, timeout=timeout_s + 30, check=False,
            )  # fmt: skip
            with out.open("a") as f:
                f.write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"cluster not ready: {done.stderr[-2000:]}; logs in {self.tmp}")

    def drive(
        self, calls: int, *, seconds: float = 0.2, prefix: str = "c", timeout_s: float = 120, **kw: Any
    ) -> Driver:
        return Driver(self, calls, seconds=seconds, prefix=prefix, timeout_s=timeout_s, **kw).start()

    def executions(self) -> list[dict[str, Any]]:
        return [line for line in read_ledger(Path(str(self.ledger) + ".jsonl")) if line["ev"] == "start"]

    def in_flight(self, settle_s: float = 15.0) -> dict[str, int]:
        """What each live worker's heartbeat says it runs and holds: the first reading with all
        at zero, or the last one after `settle_s` (a beat is up to an interval old; a counter
        stuck above zero stays there)."""
        deadline = time.monotonic() + settle_s
        while True:
            counts = self._in_flight_now()
            if set(counts.values()) <= {0} or time.monotonic() >= deadline:
                return counts
            time.sleep(0.5)

    def _in_flight_now(self) -> dict[str, int]:
        code = (
            "import json\nfrom tasks.api import catalog_store\nfrom tasks.registry import Registry\n"
            "alive = Registry(catalog_store().url).alive()\n"
            "print(json.dumps({n: b.in_flight + b.reserved for n, b in alive.items()}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        return dict(json.loads(done.stdout)) if done.returncode == 0 else {"?": -1}

    def wait_executions(self, n: int, timeout_s: float = 60) -> bool:
        return wait_for(lambda: len(self.executions()) >= n, timeout_s, interval_s=0.05)

    # --- faults ----------------------------------------------------------------------------

    def kill_worker(self, i: int) -> None:
        self.workers[i].kill()

    def pause_worker(self, i: int) -> None:
        os.killpg(self.workers[i].pid, signal.SIGSTOP)

    def resume_worker(self, i: int) -> None:
        os.killpg(self.workers[i].pid, signal.SIGCONT)

    def server_pids(self, i: int) -> frozenset[int]:
        """The ledger server processes of worker i."""
        out = set()
        for child in psutil.Process(self.workers[i].pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("ledger_server.py" in part for part in child.cmdline()):
                    out.add(child.pid)
        return frozenset(out)

    def kill_mcp_servers(self, i: int) -> int:
        """SIGKILL the ledger server processes of worker i (not the worker): a server crash."""
        killed = 0
        for child in psutil.Process(self.workers[i].pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("ledger_server.py" in part for part in child.cmdline()):
                    child.kill()
                    killed += 1
        return killed

    def restart_broker(self, down_s: float) -> float:
        """SIGKILL the broker, start it again on its port and data `down_s` later; returns when
        it is back (monotonic time)."""
        self.broker.kill()
        time.sleep(down_s)
        self.broker.start()
        return time.monotonic()

    def stop(self) -> None:
        for w in self.workers:
            if w.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGCONT)
                w.stop(timeout_s=20)
        if self.beat is not None and self.beat.poll() is None:
            self.beat.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.beat.wait(timeout=20)
        self.broker.stop()


class Driver:
    """tests/chaos/driver.py as a subprocess."""

    def __init__(self, cluster: ChaosCluster, calls: int, *, seconds: float, prefix: str, timeout_s: float,
                 projects: int = 20, idempotency: bool = True, env: dict[str, str] | None = None,
                 wrap: Callable[[list[str]], list[str]] | None = None, batch: int = 0,
                 pace_s: float = 0.0) -> None:  # fmt: skip
        """`env`: the driver's environment (default the cluster's); `wrap`: how to run its command
        elsewhere (on another host of tests/hosts)."""
        self.cluster = cluster
        self.env = env
        self.wrap = wrap
        self.calls = calls
        self.out = cluster.tmp / f"driver-{prefix}.json"
        self.args = [
            sys.executable, "-m", "tests.chaos.driver", "--out", str(self.out), "--calls", str(calls),
            "--seconds", str(seconds), "--prefix", prefix, "--timeout", str(timeout_s),
            "--projects", str(projects),
        ] + ([] if idempotency else ["--no-idempotency"])  # fmt: skip
        self.args += ["--batch", str(batch)] if batch else []
        self.args += ["--pace", str(pace_s)] if pace_s else []
        self.proc: subprocess.Popen[bytes] | None = None
        self.timeout_s = timeout_s

    def start(self) -> Driver:
        log = (self.cluster.tmp / "driver.log").open("ab")
        cmd = self.wrap(self.args) if self.wrap is not None else self.args
        env = self.env if self.env is not None else self.cluster.env
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log)
        return self

    def wait_submitted(self, timeout_s: float = 60) -> bool:
        marker = self.out.parent / (self.out.name + ".submitted")
        return wait_for(marker.exists, timeout_s, interval_s=0.05)

    def result(self) -> dict[str, dict[str, Any]]:
        assert self.proc is not None
        self.proc.wait(timeout=self.timeout_s + 60)
        outcome: dict[str, dict[str, Any]] = json.loads(self.out.read_text())
        return outcome


SCENARIOS = ("sigkill", "pause", "broker_restart", "server_kill", "warm_stop")


@dataclass
class Run:
    """One scenario's outcome, and what the faulting side saw of the cluster."""

    outcome: Outcome
    fault_at: float
    back_at: float | None = None  # the broker listening again (broker_restart)
    stop_exit: int | None = None  # the stopped worker's exit code (warm_stop)
    stop_s: float | None = None  # how long the warm stop took
    survivors: list[bool] = field(default_factory=list)  # workers alive at the end, then beat
    in_flight: dict[str, int] = field(default_factory=dict)  # per live worker, after the batch


def run_scenario(
    cluster: ChaosCluster,
    scenario: str,
    *,
    calls: int,
    seconds: float,
    pause_s: float = 25.0,
    down_s: float = 3.0,
    timeout_s: float = 180.0,
    batch: int = 0,
) -> Run:
    """Start the batch, fault at one third of the executions, wait for every result, count.
    `batch`: the calls go through `call_tools`, this many a message."""
    driver = cluster.drive(calls, seconds=seconds, timeout_s=timeout_s, batch=batch)
    assert driver.wait_submitted(), "the driver did not submit"
    cluster.wait_executions(calls // 3)
    faulted = scenario in ("sigkill", "pause", "server_kill", "warm_stop")
    victims = cluster.server_pids(0) if faulted else frozenset()
    print(f"chaos: {scenario} at {len(cluster.executions())} executions", file=sys.stderr)
    run = Run(Outcome(0, 0, 0, 0, 0, 0.0, 0), fault_at=time.time())
    sent_before = None  # warm stop: the worker goes on sending what it runs; only before the fault
    if scenario in ("sigkill", "server_kill"):
        if scenario == "sigkill":
            cluster.kill_worker(0)
        else:
            cluster.kill_mcp_servers(0)
        run.fault_at = time.time()  # the moment it is dead; its servers finish what they had
        sent_before = float("inf")
    elif scenario == "pause":
        cluster.pause_worker(0)
        run.fault_at = time.time()
        time.sleep(pause_s)
        # Nothing is sent while it is stopped, but its MCP servers were stopped with it: what the
        # worker had written to a server before the pause, the server begins after SIGCONT (within
        # a second, its stdin's backlog), and then it is a call sent before the fault.
        sent_before = time.time() + 1.0
        cluster.resume_worker(0)
    elif scenario == "broker_restart":
        cluster.restart_broker(down_s)
        run.back_at = time.time()
    elif scenario == "warm_stop":
        started = time.monotonic()
        run.stop_exit = cluster.workers[0].stop(timeout_s=timeout_s)
        run.stop_s = time.monotonic() - started
    outcome = driver.result()
    ledger = read_ledger(Path(str(cluster.ledger) + ".jsonl"))
    victim = cluster.node(0) if faulted else None
    run.outcome = analyse(ledger, outcome, run.fault_at, victims, victim, sent_before)
    run.survivors = [w.alive() for w in cluster.workers] + (
        [cluster.beat.poll() is None] if cluster.beat else []
    )
    run.in_flight = cluster.in_flight()
    return run
