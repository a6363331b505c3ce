"""Start `celery worker` processes: used by `agentful up`/`demo`, the tests and the benchmarks.

One place builds the command line, so every caller runs workers the same way a user does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.routing import worker_queues

# Measured in bench/run.py (see README "Choosing the pool"): the threads pool runs every call
# of a process on one event loop and one session per server, with many calls in flight.
DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 16


@dataclass
class WorkerProcess:
    """One `celery worker` subprocess in its own process group."""

    name: str
    servers: list[str]
    env: dict[str, str] = field(default_factory=dict)
    pool: str = DEFAULT_POOL
    concurrency: int = DEFAULT_CONCURRENCY
    prefetch: int | None = None
    queues: list[str] | None = None
    events: bool = False
    loglevel: str = "INFO"
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        queues = self.queues if self.queues is not None else worker_queues(self.servers)
        cmd = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-n", self.name, "-P", self.pool, "-c", str(self.concurrency),
            "-Q", ",".join(queues), "-l", self.loglevel,
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if self.prefetch is not None:
            cmd += ["--prefetch-multiplier", str(self.prefetch)]
        if self.events:
            cmd.append("-E")
        return cmd

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "AGENTFUL_SERVERS": ",".join(self.servers)}
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Warm shutdown (SIGTERM: finish what it holds), then SIGKILL the group if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as a crash would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def wait_for(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `predicate()` until true or `timeout_s` passes; bounded, never a bare sleep."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
