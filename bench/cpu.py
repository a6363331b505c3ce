"""CPU cost of one tool call on the Celery path: producer (publish) and worker, per call.

    python bench/cpu.py                      # 2000 echo calls, 8 in flight, + a no-op baseline
    python bench/cpu.py --calls 4000 --window 1
    python bench/cpu.py --profile-producer   # cProfile of the publishes, top entries to stderr
    python bench/cpu.py --py-spy worker.txt  # py-spy (if installed) samples the worker meanwhile

CPU time, not wall time: it stays meaningful on a shared, busy machine. One embedded Valkey,
one real `celery worker` subprocess (threads pool, as deployed) with a stdio session to
server-everything. This process publishes like the gateway does (`call_tool.apply_async` with
its own task id, Celery's per-task result SUBSCRIBE switched off) in windows of `--window`
calls, and waits for the results on one pattern subscription (a thread, as gateway/results.py
does on its loop). Figures, each in CPU microseconds per call:

- publish_us: this thread's CPU inside apply_async (validation, routing, reprs, signals, kombu);
- producer_us: this whole process (publishing plus waiting for results);
- worker_us: the worker process (all its threads: consumer, pool, event loop, heartbeat);
- server_us: the worker's children (the MCP server and its launcher).

The same is measured for Celery's bare no-op task (`ping`) on the same worker (noop_*), so
`worker_us - noop_worker_us` is what the MCP layer adds. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="measured calls per kind (default 2000)")
    p.add_argument("--window", type=int, default=8, help="calls in flight at once (default 8)")
    p.add_argument("--concurrency", type=int, default=16, help="worker threads (default 16)")
    p.add_argument("--rounds", type=int, default=1, help="repeat and report medians")
    p.add_argument(
        "--profile-producer", nargs="?", const="-", metavar="FILE",
        help="cProfile the publishes: top entries to stderr, or all to FILE (pstats)",
    )  # fmt: skip
    p.add_argument("--py-spy", metavar="FILE", help="py-spy record of the worker during the echo calls")
    p.add_argument("--no-noop", action="store_true", help="skip the bare Celery baseline")
    return p.parse_args()


def _setup(data: Path) -> Any:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    broker = EmbeddedBroker(Settings(data_dir=data / "broker"))
    url = broker.start()
    config = {"servers": {"everything": {"command": "node", "args": [str(EVERYTHING), "stdio"]}}}
    (data / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=url, AGENTFUL_CONFIG=str(data / "config.json"), AGENTFUL_DATA_DIR=str(data)
    )
    return broker


class Results:
    """Completed task ids from one `celery-task-meta-*` pattern subscription (a thread)."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.prefix = prefix
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(prefix + "*")
        self._cond = threading.Condition()
        self._done: set[str] = set()
        self._failed: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            message = self._pubsub.get_message(timeout=0.5)
            if message is None or message.get("type") != "pmessage":
                continue
            meta = json.loads(message["data"])
            if meta.get("status") not in ("SUCCESS", "FAILURE", "REVOKED"):
                continue
            with self._cond:
                self._done.add(str(meta["task_id"]))
                if meta["status"] != "SUCCESS":
                    self._failed.append(f"{meta['task_id']}: {meta.get('result')}")
                self._cond.notify_all()

    def wait(self, ids: list[str], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not all(i in self._done for i in ids):
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise SystemExit(f"no result for {[i for i in ids if i not in self._done]}")
            self._done.difference_update(ids)
        if self._failed:
            raise SystemExit(f"calls failed: {self._failed[:3]}")

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._pubsub.close()


def _cpu(proc: psutil.Process) -> tuple[float, float]:
    """(the process's CPU seconds, its descendants' CPU seconds)."""
    t = proc.cpu_times()
    own = t.user + t.system
    kids = 0.0
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            kids += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return own, kids


def measure(
    publish: Callable[[str], Any],
    results: Results,
    worker: psutil.Process,
    n: int,
    window: int,
    profiler: cProfile.Profile | None = None,
) -> dict[str, float]:
    from celery.utils import uuid

    publish_cpu = 0.0
    lat: list[float] = []
    w0, s0 = _cpu(worker)
    p0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(0, n, window):
        ids = [uuid() for _ in range(window)]
        started = time.perf_counter()
        for task_id in ids:
            c0 = time.thread_time()
            if profiler is not None:
                profiler.enable()
            publish(task_id)
            if profiler is not None:
                profiler.disable()
            publish_cpu += time.thread_time() - c0
        results.wait(ids)
        lat.append((time.perf_counter() - started) * 1000)
    elapsed = time.perf_counter() - t0
    p1 = time.process_time()
    w1, s1 = _cpu(worker)
    calls = len(lat) * window
    return {
        "publish_us": round(publish_cpu / calls * 1e6, 1),
        "producer_us": round((p1 - p0) / calls * 1e6, 1),
        "worker_us": round((w1 - w0) / calls * 1e6, 1),
        "server_us": round((s1 - s0) / calls * 1e6, 1),
        "window_p50_ms": round(statistics.median(lat), 3),
        "per_s": round(calls / elapsed, 1),
    }


def idle_worker_us_per_s(worker: psutil.Process, seconds: float = 2.0) -> float:
    w0, _ = _cpu(worker)
    time.sleep(seconds)
    w1, _ = _cpu(worker)
    return round((w1 - w0) / seconds * 1e6, 1)


def start_py_spy(pid: int, path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the worker's GIL holder (its CPU, roughly) into `path`, raw format."""
    if not path:
        return None
    exe = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if exe is None:
        print("py-spy is not installed (pip install py-spy): no worker profile", file=sys.stderr)
        return None
    cmd = [exe, "record", "-p", str(pid), "-o", path, "-f", "raw", "-r", "1000", "--gil", "--nonblocking"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def report_profile(profiler: cProfile.Profile | None, dest: str | None) -> None:
    if profiler is None:
        return
    if dest and dest != "-":
        profiler.dump_stats(dest)
        return
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def run(args: argparse.Namespace, data: Path) -> list[dict[str, float]]:
    from tasks import call_tool, ping
    from tasks.app import app
    from workers.launcher import WorkerProcess, wait_for

    # As the gateway does (gateway/server.py): no per-task SUBSCRIBE by Celery's result consumer;
    # results arrive on one pattern subscription instead.
    backend = app.backend
    backend.on_task_call = lambda producer, task_id: None
    prefix = backend.task_keyprefix
    from tasks.catalog import plain_url

    url = plain_url(str(app.conf.result_backend))
    results = Results(url, prefix.decode() if isinstance(prefix, bytes) else prefix)
    log_path = data / "worker.log"
    wp = WorkerProcess(
        "cpu@%h", ["everything"], concurrency=args.concurrency, loglevel="WARNING", log_path=log_path
    )
    wp.start()

    def echo(task_id: str) -> Any:
        return call_tool.apply_async(("everything", "echo", {"message": "hi"}), {}, task_id=task_id)

    def noop(task_id: str) -> Any:
        return ping.apply_async((), {}, task_id=task_id)

    try:
        if not wait_for(lambda: call_tool.delay("everything", "echo", {"message": "up"}).get(timeout=60), 90):
            raise SystemExit(f"the worker did not answer; log in {data}")
        worker = psutil.Process(wp.pid)
        for fn in (echo, noop):  # warm: sessions, connections, caches
            measure(fn, results, worker, 200, args.window)
        idle = idle_worker_us_per_s(worker)
        profiler = cProfile.Profile() if args.profile_producer else None
        rounds: list[dict[str, float]] = []
        for r in range(args.rounds):
            print(
                f"round {r + 1}/{args.rounds}: {args.calls} calls, {args.window} in flight", file=sys.stderr
            )
            row = {"worker_idle_us_per_s": idle}
            if not args.no_noop:
                noop_row = measure(noop, results, worker, args.calls, args.window)
                row |= {f"noop_{k}": v for k, v in noop_row.items()}
            spy = start_py_spy(wp.pid, args.py_spy if r == 0 else None)
            try:
                row |= measure(echo, results, worker, args.calls, args.window, profiler)
            finally:
                stop_py_spy(spy)
            rounds.append(row)
        report_profile(profiler, args.profile_producer)
        return rounds
    finally:
        results.close()
        wp.stop()


def main() -> None:
    args = _args()
    if not EVERYTHING.exists():
        sys.exit(f"server-everything is not installed: run `npm ci` in {ROOT} (needs Node)")
    data = Path(tempfile.mkdtemp(prefix="agentful-bench-cpu-"))
    broker = _setup(data)
    try:
        rounds = run(args, data)
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out |= {
        "calls": args.calls,
        "window": args.window,
        "rounds": args.rounds,
        "worker_concurrency": args.concurrency,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
