"""agentful: run MCP tool calls on a Celery cluster, and talk to it from the shell.

Every command reads the same settings (AGENTFUL_* variables, --config) and uses the embedded
Valkey broker when AGENTFUL_BROKER_URL is not set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import ConfigOpt, console, err, setup
from tasks.errors import AgentfulError, ConfigError, PermanentError
from tasks.settings import get_config, get_settings

EXIT_OK = 0
EXIT_CALL_FAILED = 1  # the call ran and failed, or demo calls failed
EXIT_BAD_INPUT = 2  # config, arguments, unknown server or tool
EXIT_UNAVAILABLE = 3  # broker or workers not reachable
EXIT_INTERRUPTED = 130

HELP = (
    "Run MCP tool calls on a Celery cluster, and talk to it from the shell.\n\n"
    "Every command reads the same settings (AGENTFUL_* variables, --config) and uses the "
    "embedded Valkey broker when AGENTFUL_BROKER_URL is not set."
)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
_setup = setup


def _fail(exc: AgentfulError) -> typer.Exit:
    err.print(f"[red]{type(exc).__name__}:[/] {exc}")
    return typer.Exit(EXIT_BAD_INPUT if isinstance(exc, PermanentError) else EXIT_UNAVAILABLE)


@app.command()
def demo(
    calls: Annotated[int, typer.Option(help="how many tool calls to submit", min=1)] = 300,
    workers: Annotated[int, typer.Option(help="Celery workers to start", min=1)] = 2,
    flower: Annotated[bool, typer.Option(help="start Flower on :5555")] = True,
    keep: Annotated[bool, typer.Option(help="keep the cluster running after the summary")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait for the batch")] = 300.0,
    agents: Annotated[
        bool, typer.Option(help="also run agent work (Claude Code, code generation) for 3 projects")
    ] = False,
) -> None:
    """The main job: embedded broker, two workers on real MCP servers, a batch of calls, a summary."""
    _setup(None)
    from cli.demo import run_demo

    failed = run_demo(calls, workers, flower, keep, timeout_s, agents=agents)
    raise typer.Exit(EXIT_INTERRUPTED if failed == 130 else (EXIT_CALL_FAILED if failed else EXIT_OK))


@app.command()
def up(
    config: ConfigOpt = None,
    workers: Annotated[int, typer.Option(help="Celery workers to start", min=1)] = 2,
    pool: Annotated[str | None, typer.Option(help="Celery pool (default: threads)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="tasks in flight per worker")] = None,
    flower: Annotated[bool, typer.Option(help="start Flower")] = True,
    flower_port: Annotated[int, typer.Option(help="Flower's port")] = 5555,
    flower_basic_auth: Annotated[
        str | None, typer.Option(help="user:password Flower asks for (else AGENTFUL_FLOWER_BASIC_AUTH)")
    ] = None,
    beat: Annotated[bool, typer.Option(help="start beat (health checks)")] = True,
) -> None:
    """Run a local cluster: broker if needed, workers, beat and Flower; Ctrl-C stops all."""
    if flower_basic_auth:
        os.environ["AGENTFUL_FLOWER_BASIC_AUTH"] = flower_basic_auth
    _setup(config)
    from cli.stack import Stack, flower_env

    try:
        flower_env(get_settings())  # a malformed login fails here, before anything starts
    except ConfigError as exc:
        raise _fail(exc) from None
    from workers.launcher import DEFAULT_CONCURRENCY, DEFAULT_POOL

    if not get_config().servers:
        err.print(
            "[red]error:[/] no MCP servers configured: pass --config FILE (see README, 'Configuration')"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    stack = Stack(
        workers=workers,
        pool=pool or DEFAULT_POOL,
        concurrency=concurrency or DEFAULT_CONCURRENCY,
        flower=flower,
        flower_port=flower_port,
        beat=beat,
    )
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started in the background, where SIGINT was ignored
    try:
        stack.start()
        console.print(f"broker  {stack.broker_url}" + ("  (embedded Valkey)" if stack.broker else ""))
        ready = stack.wait_ready(60)
        console.print(f"workers {len(stack.procs)} {'ready' if ready else 'starting (not all answered yet)'}")
        if flower:
            login = "  (basic auth)" if get_settings().flower_basic_auth else ""
            console.print(f"flower  {stack.flower_url}{login}")
        console.print(f"logs    {get_settings().log_dir}\nCtrl-C to stop")
        while not stopping:
            dead = stack.dead()
            if dead:
                err.print(f"[red]stopped unexpectedly: {', '.join(dead)}; see {get_settings().log_dir}")
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping: workers finish the calls they hold...")
        _stop_autoscaled(stack)
        stack.stop()
        console.print("stopped")


def _stop_autoscaled(stack: Any) -> None:
    """Workers beat's autoscaler started outlive beat (a restarted beat finds them); `up` stops
    them too: beat first, so that it starts no more (docs/autoscaling.md)."""
    from beat.autoscale import local_provider

    provider = local_provider()
    if provider is None:
        return
    for name, proc in stack.others:
        if name == "beat" and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
    provider.stop_all()


@app.command()
def worker(
    config: ConfigOpt = None,
    servers: Annotated[str | None, typer.Option(help="comma-separated servers to run (default: all)")] = None,
    name: Annotated[str, typer.Option("--name", "-n", help="Celery node name")] = "worker@%h",
    pool: Annotated[str | None, typer.Option(help="Celery pool (default: threads)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="tasks in flight per worker")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
) -> None:
    """Run one Celery worker in the foreground, holding sessions to this host's MCP servers."""
    if servers:
        os.environ["AGENTFUL_SERVERS"] = servers
    _setup(config)
    from cli.stack import use_broker
    from workers.launcher import DEFAULT_CONCURRENCY, DEFAULT_POOL, WorkerProcess

    try:
        names = get_settings().worker_servers(get_config())
    except ConfigError as exc:
        raise _fail(exc) from None
    url, broker = use_broker(get_settings())
    proc = WorkerProcess(
        name,
        names,
        pool=pool or DEFAULT_POOL,
        concurrency=concurrency or DEFAULT_CONCURRENCY,
        loglevel=loglevel,
    )
    err.print(f"worker {name}: servers {', '.join(names) or 'none'}; broker {url}")
    env = {**os.environ, "AGENTFUL_SERVERS": ",".join(names)}
    code = _foreground(proc.command(), env, replace=broker is None)
    if broker is not None:
        broker.stop()
    raise typer.Exit(code)


def _foreground(cmd: list[str], env: dict[str, str], *, replace: bool = False) -> int:
    """Run a child in the foreground; Ctrl-C and SIGTERM reach it (warm shutdown), we wait.

    `replace`: nothing of ours is left to clean up after it (no embedded broker to stop), so
    this process becomes the child (exec): one process per role, its signals straight to
    Celery, and no idle launcher holding ~65 MB beside each worker."""
    if replace:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(cmd[0], cmd, env)
    child = subprocess.Popen(cmd, env=env)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue  # the child got SIGINT from the terminal too; wait for its warm shutdown


@app.command()
def beat(config: ConfigOpt = None) -> None:
    """Run Celery beat, the control loop: health checks, schedules, autoscaling, key rotation
    (only the beat holding the Redis lease acts)."""
    _setup(config)
    from cli.stack import use_broker

    _, broker = use_broker(get_settings())
    sched = get_settings().data_dir / "beat"
    sched.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(sched / "schedule"), "-l", "INFO"]
    raise typer.Exit(_foreground(cmd, dict(os.environ), replace=broker is None))


@app.command()
def flower(
    config: ConfigOpt = None,
    port: Annotated[int, typer.Option(help="port to serve on")] = 5555,
    address: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    basic_auth: Annotated[
        str | None, typer.Option(help="user:password to ask for (else AGENTFUL_FLOWER_BASIC_AUTH)")
    ] = None,
) -> None:
    """Run Flower, the Celery monitor, against this cluster (Flower's FLOWER_* options apply)."""
    if basic_auth:
        os.environ["AGENTFUL_FLOWER_BASIC_AUTH"] = basic_auth
    _setup(config)
    from cli.stack import flower_env, use_broker

    try:
        env = flower_env(get_settings())
    except ConfigError as exc:
        raise _fail(exc) from None
    _, broker = use_broker(get_settings())
    env["AGENTFUL_BROKER_URL"] = os.environ.get("AGENTFUL_BROKER_URL", "")
    login = ", basic auth" if "FLOWER_BASIC_AUTH" in env else ""
    err.print(f"flower http://{address}:{port}{login}")
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", f"--address={address}"]
    raise typer.Exit(_foreground(cmd, env, replace=broker is None))


@app.command()
def call(
    server: Annotated[str, typer.Argument(help="MCP server name")],
    tool: Annotated[str, typer.Argument(help="tool name")],
    args: Annotated[str, typer.Option("--args", "-a", help="arguments as a JSON object")] = "{}",
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait for the result")] = 60.0,
    config: ConfigOpt = None,
) -> None:
    """Call one tool on the cluster and print its result as JSON."""
    _setup(config)
    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/] --args is not valid JSON: {exc.msg} at column {exc.colno}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tasks import call_tool
    from tasks.telemetry.hooks import start_client

    start_client("agentful-cli")  # tracing and Sentry when configured: the trace starts here
    try:
        result = call_tool.delay(server, tool, arguments).get(timeout=timeout_s)
    except AgentfulError as exc:
        raise _fail(exc) from None
    except CeleryTimeout:
        err.print(
            f"[red]no result within {timeout_s} s[/]: is a worker running server {server!r}? "
            "(the call stays queued)"
        )
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    console.print_json(json.dumps(result))
    raise typer.Exit(EXIT_CALL_FAILED if result.get("is_error") else EXIT_OK)


@app.command()
def tools(
    server: Annotated[str | None, typer.Argument(help="only this server")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait")] = 30.0,
    config: ConfigOpt = None,
) -> None:
    """List the tools the cluster offers."""
    _setup(config)
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tasks import list_tools

    try:
        listing = list_tools.delay(server).get(timeout=timeout_s)
    except AgentfulError as exc:
        raise _fail(exc) from None
    except CeleryTimeout:
        err.print(f"[red]no answer within {timeout_s} s[/]: is any worker running?")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    table = Table("server", "tool", "description")
    for name, entries in sorted(listing.items()):
        for t in entries:
            table.add_row(name, t["name"], (t["description"] or "").split("\n")[0][:80])
    console.print(table)


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="keep it live until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON; with --watch one line a refresh")] = False,
    decisions: Annotated[int, typer.Option(help="recent scaling decisions to show", min=0)] = 5,
    interval_s: Annotated[float, typer.Option("--interval", help="seconds between refreshes", min=0.1)] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Show the cluster: workers, servers (health, breakers), queue depths, calls in flight, scaling."""
    _setup(config)
    from cli.status import run

    try:
        run(watch=watch, as_json=as_json, decisions=decisions, interval_s=interval_s, console=console)
    except AgentfulError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        return


@app.command()
def projects(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    config: ConfigOpt = None,
) -> None:
    """List projects: the host holding each workspace, its commit, uncommitted and unpushed work."""
    _setup(config)
    from cli.projects import run

    try:
        run(as_json=as_json, console=console)
    except AgentfulError as exc:
        raise _fail(exc) from None


@app.command()
def gateway(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="address to bind (else gateway.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (else gateway.port)", min=0, max=65535)] = None,
    stdio: Annotated[bool, typer.Option("--stdio", help="serve one client on stdin/stdout")] = False,
) -> None:
    """The MCP gateway: the cluster's tools, resources and prompts at one MCP endpoint."""
    import logging

    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)  # stdout is MCP's in --stdio
    _setup(config)
    from gateway.app import serve, serve_stdio

    try:
        if stdio:
            serve_stdio(get_config())
        else:
            serve(get_config(), host, port)
    except AgentfulError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _add_keys() -> None:
    from gateway.auth.cli import keys_app

    app.add_typer(keys_app, name="keys")


_add_keys()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
