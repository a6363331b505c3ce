"""The processes of a local cluster: broker (if needed), workers, beat, Flower.

`agentful up` and `agentful demo` both start one; stopping it stops everything it started, in
reverse order, warm first (workers finish what they hold).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cli.broker import EmbeddedBroker
from tasks.errors import ConfigError
from tasks.settings import Settings, get_config, get_settings, reset_caches
from workers.launcher import DEFAULT_CONCURRENCY, DEFAULT_POOL, WorkerProcess, wait_for

console = Console(stderr=True)


def use_broker(settings: Settings) -> tuple[str, EmbeddedBroker | None]:
    """AGENTFUL_BROKER_URL if set; else the embedded Valkey (started here, or already running)."""
    if settings.broker_url:
        return settings.broker_url, None
    broker = EmbeddedBroker(settings)
    url = broker.start()
    os.environ["AGENTFUL_BROKER_URL"] = url
    reset_caches()
    return url, broker


def flower_env(settings: Settings) -> dict[str, str]:
    """Flower's environment. Credentials reach it as FLOWER_BASIC_AUTH (Flower's own option),
    never on its command line, which every user of the host can read in `ps`."""
    env = dict(os.environ)
    env.pop("AGENTFUL_FLOWER_BASIC_AUTH", None)
    value = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if value:  # empty (compose's `${VAR:-}`): no login
        for pair in value.split(","):  # Flower splits the option on commas
            user, sep, password = pair.partition(":")
            if not (user and sep and password):
                raise ConfigError(
                    "AGENTFUL_FLOWER_BASIC_AUTH / --basic-auth: expected user:password "
                    "(several separated by commas; no comma inside a password)"
                )
        env["FLOWER_BASIC_AUTH"] = value
    return env


@dataclass
class Stack:
    workers: int = 2
    pool: str = DEFAULT_POOL
    concurrency: int = DEFAULT_CONCURRENCY
    beat: bool = True
    flower: bool = True
    flower_port: int = 5555
    events: bool = True
    name_prefix: str = "worker"
    broker: EmbeddedBroker | None = None
    broker_url: str = ""
    procs: list[WorkerProcess] = field(default_factory=list)
    others: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    def start(self) -> Stack:
        settings = get_settings()
        flower_environ = flower_env(settings) if self.flower else None  # a bad login fails first
        self.broker_url, self.broker = use_broker(settings)
        config = get_config()
        servers = settings.worker_servers(config)
        logs = get_settings().log_dir
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.workers + 1):
            self.procs.append(
                WorkerProcess(
                    f"{self.name_prefix}-{i}@%h",
                    servers,
                    pool=self.pool,
                    concurrency=self.concurrency,
                    events=self.events,
                    log_path=logs / f"{self.name_prefix}-{i}.log",
                ).start()
            )
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        if self.beat:
            beat_dir = settings.data_dir / "beat"
            beat_dir.mkdir(parents=True, exist_ok=True)
            self._spawn("beat", [*celery, "beat", "-s", str(beat_dir / "schedule"), "-l", "INFO"], logs)
        if self.flower:
            cmd = [*celery, "flower", f"--port={self.flower_port}", "--address=127.0.0.1"]
            assert flower_environ is not None
            flower_environ["AGENTFUL_BROKER_URL"] = self.broker_url
            self._spawn("flower", cmd, logs, env=flower_environ)
        return self

    def _spawn(self, name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        out = (logs / f"{name}.log").open("ab")
        self.others.append((name, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)))

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """True once every worker answers a ping."""
        from tasks import app

        names = {p.name.replace("%h", _hostname()) for p in self.procs}

        def all_up() -> bool:
            replies = app.control.ping(timeout=0.5) or []
            return names <= {k for r in replies for k in r}

        return wait_for(all_up, timeout_s, interval_s=0.3)

    def dead(self) -> list[str]:
        out = [p.name for p in self.procs if not p.alive()]
        return out + [name for name, proc in self.others if proc.poll() is not None]

    def stop(self) -> None:
        for name, proc in reversed(self.others):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]{name} did not stop in 10 s; killing it")
                proc.kill()
        for worker in self.procs:
            worker.stop()
        if self.broker is not None:
            self.broker.stop()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def node_available() -> bool:
    return shutil.which("node") is not None
