"""What the MCP layer costs on top of Celery: call_tool against a bare no-op task, one run.

    python bench/run.py --quick          # under 3 minutes
    python bench/run.py                  # more calls, three rounds, medians
    python bench/run.py --pool prefork --concurrency 2

One embedded Valkey (or --broker-url), one `celery worker` subprocess that consumes both the
no-op queue and the server-everything queue, so the baseline and `call_tool` run on the very
same pool, concurrency, prefetch and acknowledgement settings. Also a direct MCP session to the
same server (server-everything `echo` over stdio), in this process; the same echo calls through
`call_tools` (`batch_per_s`, 100 calls a message), against that direct session
(`batch_vs_direct`); and the memory of that
worker against a bare Celery worker (a one-task app, the same pool). The last line printed is
one JSON object.
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
EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def setup_env(data_dir: Path, broker_url: str | None) -> Any:
    """Broker + config in the environment, before `tasks` is imported (celeryconfig reads it)."""
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    broker = None
    if broker_url is None:
        broker = EmbeddedBroker(Settings(data_dir=data_dir))
        broker_url = broker.start()
    config = {"servers": {"everything": {"command": "node", "args": [str(EVERYTHING), "stdio"]}}}
    (data_dir / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=broker_url,
        AGENTFUL_CONFIG=str(data_dir / "config.json"),
        AGENTFUL_DATA_DIR=str(data_dir),
    )
    return broker


def sequential_ms(submit: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        submit().get(timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def batch_per_s(n: int) -> float:
    """`n` echo calls through `call_tools` (100 calls a message), all in flight."""
    from tasks import call_tools

    calls = [{"server": "everything", "tool": "echo", "arguments": {"message": "hi"}}] * n
    t0 = time.perf_counter()
    call_tools(calls).get(timeout=300, propagate=True)
    return n / (time.perf_counter() - t0)


def warm_up(*submits: Any) -> None:
    for submit in submits:
        sequential_ms(submit, 100)
        throughput_per_s(submit, 200)
    batch_per_s(200)


def throughput_per_s(submit: Any, n: int) -> float:
    from celery.result import ResultSet

    t0 = time.perf_counter()
    results = [submit() for _ in range(n)]
    ResultSet(results).get(timeout=300, propagate=True)
    return n / (time.perf_counter() - t0)


BARE_APP = """
from celery import Celery
app = Celery("bare", broker={url!r})
app.conf.task_ignore_result = True
@app.task(name="bare.noop")
def noop():
    return None
"""


def bare_worker_rss_mb(data_dir: Path, broker_url: str, pool: str, concurrency: int) -> float:
    """RSS of a bare Celery worker (a one-task app, the same pool and concurrency, the same
    broker) after it ran 200 no-ops: what a worker costs before agentful adds anything."""
    import psutil
    from celery import Celery

    (data_dir / "bare.py").write_text(BARE_APP.format(url=broker_url))
    log = data_dir / "bare.log"
    cmd = [sys.executable, "-m", "celery", "-A", "bare", "worker", "-P", pool, "-c", str(concurrency),
           "-Q", "bare", "-l", "INFO", "--without-gossip", "--without-mingle", "-n", "bare@%h"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=data_dir, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        sender = Celery("bare", broker=broker_url)
        for _ in range(200):
            sender.send_task("bare.noop", queue="bare")
        time.sleep(3)
        return float(psutil.Process(proc.pid).memory_info().rss) / 2**20
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def direct_mcp(n: int) -> tuple[list[float], float]:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
    with open(os.devnull, "w") as devnull:
        async with Client(stdio_client(params, errlog=devnull)) as client:
            for _ in range(50):
                await client.call_tool("echo", {"message": "warm"})
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                await client.call_tool("echo", {"message": "hi"})
                lat.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            for _ in range(n):
                await client.call_tool("echo", {"message": "hi"})
            return lat, n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls, one round (< 3 min)")
    parser.add_argument("--pool", default=None, help="celery pool (default: agentful's default)")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--broker-url", default=None, help="default: a fresh embedded Valkey")
    args = parser.parse_args()
    if not EVERYTHING.exists():
        sys.exit(f"server-everything is not installed: run `npm ci` in {ROOT} (needs Node)")

    n_seq, n_tp, rounds = (300, 2000, 1) if args.quick else (1000, 5000, 3)
    n_slow = 200 if args.quick else 500
    data_dir = Path(tempfile.mkdtemp(prefix="agentful-bench-"))
    broker = setup_env(data_dir, args.broker_url)

    import anyio
    import psutil

    from tasks import call_tool, ping
    from workers.launcher import DEFAULT_CONCURRENCY, DEFAULT_POOL, WorkerProcess

    pool = args.pool or DEFAULT_POOL
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    worker = WorkerProcess(
        "bench@%h", ["everything"], pool=pool, concurrency=concurrency, loglevel="WARNING",
        log_path=data_dir / "worker.log",
    ).start()  # fmt: skip
    try:
        noop = ping.delay

        def echo() -> Any:
            return call_tool.delay("everything", "echo", {"message": "hi"})

        echo().get(timeout=60)  # the session is up
        warm_up(noop, echo)
        figures: dict[str, list[float]] = {
            k: [] for k in ("noop_seq", "call_seq", "noop_tp", "call_tp", "batch_tp")
        }
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}: sequential ({n_seq} calls each)...", file=sys.stderr)
            figures["noop_seq"] += sequential_ms(noop, n_seq)
            figures["call_seq"] += sequential_ms(echo, n_seq)
            print(f"round {r + 1}/{rounds}: throughput ({n_tp} calls in flight each)...", file=sys.stderr)
            figures["noop_tp"].append(throughput_per_s(noop, n_tp))
            figures["call_tp"].append(throughput_per_s(echo, n_tp))
            figures["batch_tp"].append(batch_per_s(n_tp))
        print(f"slow tool: {n_slow} calls of a 100 ms tool, all in flight...", file=sys.stderr)
        slow_args = {"duration": 0.1, "steps": 1}

        def slow() -> Any:
            return call_tool.delay("everything", "trigger-long-running-operation", slow_args)

        slow_per_s = throughput_per_s(slow, n_slow)
        rss_worker = float(psutil.Process(worker.pid).memory_info().rss) / 2**20
        rss_bare = bare_worker_rss_mb(data_dir, os.environ["AGENTFUL_BROKER_URL"], pool, concurrency)
    finally:
        worker.stop()
        if broker is not None:
            broker.stop()
    print("direct MCP session...", file=sys.stderr)
    direct_lat, direct_tp = anyio.run(direct_mcp, n_seq * 2)

    noop_per_s = statistics.median(figures["noop_tp"])
    call_per_s = statistics.median(figures["call_tp"])
    result = {
        "pool": pool,
        "concurrency": concurrency,
        "broker": "embedded-valkey" if args.broker_url is None else args.broker_url.split("://")[0],
        "celery_noop_per_s": round(noop_per_s, 1),
        "call_tool_per_s": round(call_per_s, 1),
        "throughput_ratio": round(call_per_s / noop_per_s, 3),
        "celery_noop_p50_ms": round(pct(figures["noop_seq"], 50), 3),
        "celery_noop_p99_ms": round(pct(figures["noop_seq"], 99), 3),
        "call_tool_p50_ms": round(pct(figures["call_seq"], 50), 3),
        "call_tool_p99_ms": round(pct(figures["call_seq"], 99), 3),
        "p50_overhead_ms": round(pct(figures["call_seq"], 50) - pct(figures["noop_seq"], 50), 3),
        "direct_mcp_p50_ms": round(pct(direct_lat, 50), 3),
        "direct_mcp_per_s": round(direct_tp, 1),
        "batch_per_s": round(statistics.median(figures["batch_tp"]), 1),
        "batch_vs_direct": round(statistics.median(figures["batch_tp"]) / direct_tp, 3),
        "call_tool_100ms_tool_per_s": round(slow_per_s, 1),
        "rss_mb_worker": round(rss_worker, 1),  # the Celery process, its MCP servers aside
        "rss_mb_celery_worker": round(rss_bare, 1),
        "rss_ratio": round(rss_worker / rss_bare, 2),
        "rounds": rounds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
