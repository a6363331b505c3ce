"""The MCP gateway against the MCP server itself: server-everything `echo`, one run.

    python bench/gateway.py --quick        # well under a minute
    python bench/gateway.py                # more calls

One embedded Valkey; one `celery worker` subprocess (threads pool) holding a stdio session to
server-everything; `agentful gateway` as a subprocess (Streamable HTTP, JSON responses, auth on
when gateway/auth/ is there: a client-credentials token from its /token endpoint); and the same
server-everything over Streamable HTTP and over stdio for the direct baselines. Every client is
the MCP SDK's `mcp.Client` in this process, one persistent connection each.

Measured: sequential calls through the gateway (p50, p99), through direct HTTP and direct stdio
(p50); then 8 concurrent callers through the gateway (calls/s), and the same through a second
gateway with `coalesce: false` (one call_tool message a request, gateway/coalesce.py): the
baseline of `coalesce_gain`. Last line: one JSON object with gateway_p50_ms, gateway_p99_ms,
gateway_per_s, direct_http_p50_ms, direct_stdio_p50_ms, gateway_plain_per_s, coalesce_gain, and more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TOOL = "echo"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not listen on {port}")
        time.sleep(0.1)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer calls (under a minute)")
    p.add_argument("--calls", type=int, default=None, help="sequential calls per path")
    p.add_argument("--callers", type=int, default=8, help="concurrent callers through the gateway")
    p.add_argument("--per-caller", type=int, default=None, help="calls per concurrent caller")
    p.add_argument("--concurrency", type=int, default=16, help="worker threads")
    p.add_argument("--no-auth", action="store_true", help="gateway without auth even if gateway/auth/ exists")
    return p.parse_args()


def auth_available() -> bool:
    return importlib.util.find_spec("gateway.auth.verifier") is not None


def setup(data: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any], str | None]:
    from cli.broker import EmbeddedBroker
    from tasks.settings import Settings

    broker = EmbeddedBroker(Settings(data_dir=data / "broker"))
    url = broker.start()
    gateway: dict[str, Any] = {"host": "127.0.0.1", "port": free_port()}
    secret: str | None = None
    if auth_available() and not args.no_auth:
        from gateway.auth.passwords import hash_secret

        secret = secrets.token_urlsafe(24)
        gateway["auth"] = {
            "enabled": True,
            "clients": {"bench": {"secretHash": hash_secret(secret), "roles": ["caller"]}},
            "roles": {"caller": ["tools:call:*"]},
        }
    config = {
        "servers": {"everything": {"command": "node", "args": [str(EVERYTHING), "stdio"]}},
        "gateway": gateway,
    }
    (data / "config.json").write_text(json.dumps(config))
    os.environ.update(
        AGENTFUL_BROKER_URL=url, AGENTFUL_CONFIG=str(data / "config.json"), AGENTFUL_DATA_DIR=str(data)
    )
    return broker, config, secret


def token(base: str, secret: str) -> str:
    import httpx2

    r = httpx2.post(
        f"{base}/token",
        data={"grant_type": "client_credentials", "client_id": "bench", "client_secret": secret},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


Opener = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


def http_opener(url: str, headers: dict[str, str] | None = None) -> Opener:
    @contextlib.asynccontextmanager
    async def open_client() -> AsyncIterator[Any]:
        import httpx2
        import mcp
        from mcp.client.streamable_http import streamable_http_client

        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=60) as http,
            mcp.Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client

    return open_client


def stdio_opener() -> Opener:
    @contextlib.asynccontextmanager
    async def open_client() -> AsyncIterator[Any]:
        import mcp
        from mcp.client.stdio import StdioServerParameters

        params = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
        async with mcp.Client(params) as client:
            yield client

    return open_client


async def sequential(open_client: Opener, name: str, n: int) -> list[float]:
    out: list[float] = []
    async with open_client() as c:
        for i in range(n + 20):  # 20 warm-up calls
            t0 = time.perf_counter()
            r = await c.call_tool(name, {"message": f"m{i}"})
            if r.is_error:
                raise SystemExit(f"{name}: {r.content}")
            if i >= 20:
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def concurrent(
    open_client: Opener, name: str, callers: int, per_caller: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(open_client()) for _ in range(callers)]
        for c in clients:  # warm every connection
            await c.call_tool(name, {"message": "warm"})

        async def caller(c: Any) -> None:
            for i in range(per_caller):
                t0 = time.perf_counter()
                r = await c.call_tool(name, {"message": f"c{i}"})
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.is_error:
                    raise SystemExit(f"{name}: {r.content}")

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in clients))
        elapsed = time.perf_counter() - t0
    return callers * per_caller / elapsed, latencies


def main() -> None:
    args = _args()
    n = args.calls or (200 if args.quick else 1000)
    per_caller = args.per_caller or (60 if args.quick else 250)
    data = Path(tempfile.mkdtemp(prefix="agentful-bench-gateway-"))
    broker, config, secret = setup(data, args)
    from workers.launcher import WorkerProcess, wait_for

    procs: list[subprocess.Popen[bytes]] = []
    worker = WorkerProcess(
        "bench@%h",
        ["everything"],
        concurrency=args.concurrency,
        log_path=data / "worker.log",
        loglevel="WARNING",
    ).start()
    try:
        http_port = free_port()
        everything_http = subprocess.Popen(
            ["node", str(EVERYTHING), "streamableHttp"],
            env={**os.environ, "PORT": str(http_port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(everything_http)
        # The same gateway twice: as configured (coalescing on, the default) and with
        # `coalesce: false`, one call_tool message a request: the baseline in the same run.
        plain = {**config, "gateway": {**config["gateway"], "port": free_port(), "coalesce": False}}
        (data / "config-plain.json").write_text(json.dumps(plain))
        bases = []
        for name, cfg in (("config", config), ("config-plain", plain)):
            with (data / f"gateway-{name}.log").open("ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "gateway", "--config", str(data / f"{name}.json")],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
            wait_port(int(cfg["gateway"]["port"]), procs[-1], name)
            bases.append(f"http://127.0.0.1:{cfg['gateway']['port']}")
        wait_port(http_port, everything_http, "server-everything HTTP")

        def gateway_ready(base: str) -> bool:
            import httpx2

            try:
                return "everything" in httpx2.get(f"{base}/healthz", timeout=2).json().get("servers", [])
            except (httpx2.HTTPError, ValueError):
                return False

        for base in bases:
            if not wait_for(lambda b=base: gateway_ready(b), 60):  # type: ignore[misc]
                raise SystemExit(f"the gateway never listed server-everything; logs in {data}")
        gw, gw_plain = (
            http_opener(f"{b}/mcp", {"Authorization": f"Bearer {token(b, secret)}"} if secret else {})
            for b in bases
        )
        direct_http = http_opener(f"http://127.0.0.1:{http_port}/mcp")

        async def measure() -> dict[str, Any]:
            gw_seq = await sequential(gw, f"everything__{TOOL}", n)
            http_seq = await sequential(direct_http, TOOL, n)
            stdio_seq = await sequential(stdio_opener(), TOOL, n)
            per_s, conc = await concurrent(gw, f"everything__{TOOL}", args.callers, per_caller)
            plain_per_s, plain_conc = await concurrent(
                gw_plain, f"everything__{TOOL}", args.callers, per_caller
            )
            return {
                "gateway_plain_per_s": round(plain_per_s, 1),
                "gateway_plain_concurrent_p50_ms": round(pct(plain_conc, 50), 3),
                "coalesce_gain": round(per_s / plain_per_s, 3),
                "gateway_p50_ms": round(pct(gw_seq, 50), 3),
                "gateway_p99_ms": round(pct(gw_seq, 99), 3),
                "gateway_per_s": round(per_s, 1),
                "direct_http_p50_ms": round(pct(http_seq, 50), 3),
                "direct_stdio_p50_ms": round(pct(stdio_seq, 50), 3),
                "gateway_concurrent_p50_ms": round(pct(conc, 50), 3),
                "gateway_concurrent_p99_ms": round(pct(conc, 99), 3),
                "direct_http_p99_ms": round(pct(http_seq, 99), 3),
                "direct_stdio_p99_ms": round(pct(stdio_seq, 99), 3),
            }

        out = asyncio.run(measure())
        out |= {
            "auth": bool(secret),
            "callers": args.callers,
            "calls": n,
            "per_caller": per_caller,
            "worker_concurrency": args.concurrency,
            "transport": "streamable-http, json responses, protocol 2026-07-28",
            "cpus": os.cpu_count(),
        }
        print(json.dumps(out))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
        worker.stop()
        broker.stop()


if __name__ == "__main__":
    main()
