"""`local`: `celery worker` processes on beat's own host, started through workers/launcher.py
(the command line every other caller uses).

Each started worker is recorded in a state directory (`<data dir>/autoscale/local/<name>.json`:
node, pid, the process's start time, whether it is stopping), so a beat that restarts finds the
workers it started and neither loses nor doubles them. Workers run in their own session, so they
outlive a beat that dies. A pid is trusted only while the process with that pid started when the
record says (pids are reused). Removing a worker is a warm stop (SIGTERM: Celery finishes the
calls it runs and hands back the ones it reserved); one still running after `stopTimeoutS` is
killed with its process group, and its calls are redelivered by the cluster's failover.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from beat.providers.base import ProviderError
from workers.launcher import WorkerProcess

log = logging.getLogger(__name__)


@dataclass
class Record:
    node: str
    index: int
    pid: int
    created_s: float  # the process's start time, as psutil reports it
    started_at_s: float
    stopping_at_s: float | None = None


class LocalProcessProvider:
    name = "local"

    def __init__(
        self,
        *,
        servers: Sequence[str],
        state_dir: Path,
        log_dir: Path,
        pool: str = "threads",
        concurrency: int = 16,
        prefetch: int | None = None,
        name_prefix: str = "auto",
        stop_timeout_s: float = 300.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.servers = list(servers)
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.pool = pool
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.name_prefix = name_prefix
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(env or {})
        self.host = socket.gethostname()
        self._procs: dict[int, WorkerProcess] = {}  # the ones this process started: to reap them
        self.state_dir.mkdir(parents=True, exist_ok=True)

    # -- state ------------------------------------------------------------------------------

    def _path(self, index: int) -> Path:
        return self.state_dir / f"{self.name_prefix}-{index}.json"

    def _save(self, rec: Record) -> None:
        tmp = self._path(rec.index).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)), encoding="utf-8")
        tmp.replace(self._path(rec.index))

    def _alive(self, rec: Record) -> bool:
        mine = self._procs.get(rec.pid)
        if mine is not None and mine.proc is not None and mine.proc.poll() is not None:
            return False  # exited (and reaped now)
        try:
            proc = psutil.Process(rec.pid)
            return abs(proc.create_time() - rec.created_s) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def records(self) -> list[Record]:
        """Every worker it started that still runs; gone ones are forgotten, overdue stops killed."""
        out: list[Record] = []
        now = time.time()
        for path in sorted(self.state_dir.glob(f"{self.name_prefix}-*.json")):
            try:
                rec = Record(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable autoscaler state %s: %s", path, exc)
                continue
            if not self._alive(rec):
                path.unlink(missing_ok=True)
                self._procs.pop(rec.pid, None)
                continue
            if rec.stopping_at_s is not None and now - rec.stopping_at_s > self.stop_timeout_s:
                late = now - rec.stopping_at_s
                log.warning("%s still runs %.0fs after its warm stop: killing it", rec.node, late)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(rec.pid, signal.SIGKILL)
            out.append(rec)
        return out

    def running(self) -> list[Record]:
        return [r for r in self.records() if r.stopping_at_s is None]

    def nodes(self) -> list[str]:
        return [r.node for r in self.running()]

    # -- the Protocol -----------------------------------------------------------------------

    def current(self) -> int:
        return len(self.running())

    def candidates(self, idle: Mapping[str, float]) -> dict[str, float]:
        mine = set(self.nodes())
        return {n: s for n, s in idle.items() if n in mine}

    def scale_to(self, n: int, *, stop: Sequence[str] = ()) -> None:
        if n < 0:
            raise ProviderError(f"cannot run {n} workers")
        records = self.records()
        running = [r for r in records if r.stopping_at_s is None]
        if n > len(running):
            used = {r.index for r in records}
            for _ in range(n - len(running)):
                index = next(i for i in range(1, len(used) + 2) if i not in used)
                used.add(index)
                self._start(index)
        elif n < len(running):
            named = [r for r in running if r.node in stop]
            rest = sorted((r for r in running if r.node not in stop), key=lambda r: -r.started_at_s)
            for rec in (named + rest)[: len(running) - n]:
                self._stop(rec)

    def _start(self, index: int) -> Record:
        node = f"{self.name_prefix}-{index}@{self.host}"
        worker = WorkerProcess(
            node,
            self.servers,
            env=self.env,
            pool=self.pool,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            events=True,
            log_path=self.log_dir / f"{self.name_prefix}-{index}.log",
        )
        try:
            worker.start()
        except OSError as exc:
            raise ProviderError(f"cannot start worker {node}: {exc}") from exc
        try:
            created = psutil.Process(worker.pid).create_time()
        except psutil.Error as exc:
            raise ProviderError(f"worker {node} exited at once: {exc}") from exc
        rec = Record(node=node, index=index, pid=worker.pid, created_s=created, started_at_s=time.time())
        self._procs[worker.pid] = worker
        self._save(rec)
        log.info("started worker %s (pid %d)", node, worker.pid)
        return rec

    def _stop(self, rec: Record) -> None:
        """Warm stop, not waited for: the next evaluations see it go."""
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            self._path(rec.index).unlink(missing_ok=True)
            return
        rec.stopping_at_s = time.time()
        self._save(rec)
        log.info("stopping worker %s (pid %d), warm", rec.node, rec.pid)

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """Stop every worker it started and wait for them (tests, benchmarks)."""
        for rec in self.running():
            self._stop(rec)
        deadline = time.monotonic() + timeout_s
        while self.records() and time.monotonic() < deadline:
            time.sleep(0.2)
        for rec in self.records():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.records() and time.monotonic() < deadline:
            time.sleep(0.1)
