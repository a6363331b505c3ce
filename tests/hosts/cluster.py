"""The cluster of docs/deployment.md on hosts of a Lab: a broker host (redis-server, TLS only,
password), worker hosts, a control host (beat and the gateway, TLS 1.3) and a client host.

Each role is started with the command docker/compose.yaml runs (`agentful worker`, `agentful
beat`, `agentful gateway --host 0.0.0.0 --port 8765`) and the environment the guide names
(AGENTFUL_BROKER_URL=rediss://:PASSWORD@broker.lab:6380/0, AGENTFUL_BROKER_CA, AGENTFUL_CONFIG,
AGENTFUL_DATA_DIR). The certificates are made here (trustme) for the host names used, and
checked against them. Every worker runs the ledger MCP server (bench/ledger_server.py): each real
execution is fsynced to one ledger (one file system: the hosts share this machine's disk).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import trustme

from tests.chaos.harness import OWN_QUEUE_CALLS, REGISTRY_READY, Driver, read_ledger
from tests.hosts.lab import Host, Lab
from tests.hosts.sentinel import MASTER, SentinelGroup
from workers.launcher import wait_for

ROOT = Path(__file__).resolve().parents[2]
AGENTFUL = str(Path(sys.executable).parent / "agentful")
LEDGER_SERVER = ROOT / "bench" / "ledger_server.py"
BROKER_PORT = 6380
GATEWAY_PORT = 8765
PASSWORD = "lab-broker-password"


class HostCluster:
    def __init__(
        self, tmp: Path, lab: Lab, workers: list[str], *, beat: bool = True, gateway: bool = True,
        delay_line: bool = False, sentinel: list[str] | None = None,
    ) -> None:  # fmt: skip
        """`delay_line`: the broker is reached through tests/hosts/delay.py (`set_rtt`).
        `sentinel`: the broker is these hosts under Sentinel (tests/hosts/sentinel.py), not one
        `broker` host."""
        self.tmp = tmp
        self.sentinel = SentinelGroup(tmp, lab, sentinel, PASSWORD) if sentinel else None
        self.delay_line = delay_line
        self.rtt_file = tmp / "rtt-ms"
        self.lab = lab
        self.names = workers
        self.with_beat = beat
        self.with_gateway = gateway
        self.ledger = tmp / "ledger.txt"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        server_env = {"LEDGER_FILE": str(self.ledger)}
        ledger = {"command": sys.executable, "args": [str(LEDGER_SERVER)], "env": server_env}
        self.config: dict[str, Any] = {"servers": {"ledger": ledger}}

    # --- environment -----------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        if self.sentinel is not None:
            return self.sentinel.url
        return f"rediss://:{PASSWORD}@{self.lab['broker'].fqdn}:{BROKER_PORT}/0"

    def env(self, host: str) -> dict[str, str]:
        """The environment docs/deployment.md names, for a process on `host`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFUL_")}
        return (
            env
            | {
                "AGENTFUL_BROKER_URL": self.broker_url,
                "AGENTFUL_BROKER_CA": str(self.ca_file),
                "AGENTFUL_CONFIG": str(self.tmp / "config.json"),
                "AGENTFUL_DATA_DIR": str(self.tmp / host / "data"),
                "PYTHONPATH": str(ROOT),
            }
            | ({"AGENTFUL_SENTINEL_MASTER": MASTER} if self.sentinel is not None else {})
        )

    def _cert(self, host: Host) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(host.fqdn)
        cert, key = self.tmp / f"{host.name}.pem", self.tmp / f"{host.name}.key"
        cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        return cert, key

    def node(self, name: str) -> str:
        return f"worker@{name}"

    # --- roles -----------------------------------------------------------------------------

    def start(self) -> HostCluster:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.ca.cert_pem.bytes())
        if self.with_gateway:
            cert, key = self._cert(self.lab["ctl"])
            self.config["gateway"] = {"tls": {"certFile": str(cert), "keyFile": str(key)}}
        (self.tmp / "config.json").write_text(json.dumps(self.config))
        self.start_broker()
        for name in self.names:
            self.start_worker(name)
        if self.with_beat:
            self.procs["beat"] = self._start("ctl", [AGENTFUL, "beat"], "beat")
        if self.with_gateway:
            cmd = [AGENTFUL, "gateway", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)]
            self.procs["gateway"] = self._start("ctl", cmd, "gateway")
        self.wait_ready(self.names)
        return self

    def _start(self, host: str, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        (self.tmp / host).mkdir(parents=True, exist_ok=True)
        return self.lab[host].popen(cmd, env=self.env(host), log=self.tmp / f"{log}.log", cwd=ROOT)

    def start_broker(self) -> None:
        if self.sentinel is not None:
            self.sentinel.start()
            return
        host = self.lab["broker"]
        cert, key = self._cert(host)
        data = self.tmp / "broker"
        data.mkdir(parents=True, exist_ok=True)
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = BROKER_PORT + 1 if self.delay_line else BROKER_PORT
        if self.delay_line:
            self.rtt_file.write_text("0")
            line = [sys.executable, "-m", "tests.hosts.delay", host.ip, str(BROKER_PORT), host.ip, str(port),
                    str(self.rtt_file)]  # fmt: skip
            self.procs["delay"] = host.popen(
                line, env=self.env("broker"), log=self.tmp / "delay.log", cwd=ROOT
            )
        cmd = [
            server, "--port", "0", "--tls-port", str(port), "--bind", host.ip,
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        self.procs["broker"] = host.popen(cmd, env=dict(os.environ), log=self.tmp / "broker.log")
        ok = wait_for(lambda: self._broker_answers() or self.procs["broker"].poll() is not None, 20)
        if not ok or self.procs["broker"].poll() is not None:
            raise RuntimeError(f"the broker host's redis-server did not start: {self._tail('broker')}")

    def _broker_answers(self) -> bool:
        code = "import redis,sys; redis.Redis.from_url(sys.argv[1], ssl_ca_certs=sys.argv[2]).ping()"
        done = self.lab["client"].run(
            [sys.executable, "-c", code, self.broker_url, str(self.ca_file)],
            env=dict(os.environ),
            timeout_s=10,
        )
        return done.returncode == 0

    def set_rtt(self, ms: float) -> None:
        """The round trip to the broker, for every host (the delay line must be on)."""
        assert self.delay_line, "HostCluster(..., delay_line=True)"
        self.rtt_file.write_text(f"{ms:g}")
        time.sleep(0.5)  # the line re-reads it every 0.2 s

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        self.procs[name] = proc = self._start(name, [AGENTFUL, "worker"], name)
        return proc

    def stop_worker(self, name: str, timeout_s: float = 60) -> int | None:
        """A warm stop (SIGTERM), as systemd or Docker does it; the exit status."""
        return self.lab[name].stop(self.procs[name], timeout_s=timeout_s)

    def client(self, code: str, *args: str, timeout_s: float = 120) -> Any:
        """A user's program (Python printing one JSON value) on the client host."""
        done = self.lab["client"].run(
            [sys.executable, "-c", code, *args], env=self.env("client"), timeout_s=timeout_s, cwd=ROOT
        )
        if done.returncode != 0:
            raise AssertionError(f"client program failed: {done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_ready(self, names: list[str], timeout_s: float = 120) -> None:
        """Every worker answers a call on its own queue (its session to the ledger is up), and
        its heartbeat says so, or the router would not choose it yet."""
        nodes = [self.node(n) for n in names]
        self.client(OWN_QUEUE_CALLS, str(timeout_s), *nodes, timeout_s=timeout_s + 30)
        self.client(REGISTRY_READY, "60", *nodes, timeout_s=90)

    # --- the batch and its ledger ----------------------------------------------------------

    def drive(
        self, calls: int, *, seconds: float, timeout_s: float, prefix: str = "c", projects: int = 20,
        pace_s: float = 0.0,
    ) -> Driver:  # fmt: skip
        driver = Driver(
            self, calls, seconds=seconds, prefix=prefix, timeout_s=timeout_s, projects=projects,  # type: ignore[arg-type]
            env=self.env("client"), wrap=self.lab["client"].command, pace_s=pace_s,
        )  # fmt: skip
        return driver.start()

    def executions(self) -> list[dict[str, Any]]:
        return [line for line in read_ledger(Path(str(self.ledger) + ".jsonl")) if line["ev"] == "start"]

    def wait_executions(self, n: int, timeout_s: float = 60) -> bool:
        return wait_for(lambda: len(self.executions()) >= n, timeout_s, interval_s=0.05)

    def server_pids(self, name: str) -> frozenset[int]:
        out = set()
        for child in psutil.Process(self.procs[name].pid).children(recursive=True):
            try:
                if any("ledger_server.py" in part for part in child.cmdline()):
                    out.add(child.pid)
            except psutil.Error:
                continue
        return frozenset(out)

    def declared_dead(self, names: list[str]) -> dict[str, float]:
        """The workers that learnt they had been declared dead, and when (their log's clock)."""
        out: dict[str, float] = {}
        for name in names:
            for line in self.log(name).splitlines():
                if "was declared dead by the cluster" in line and line.startswith("["):
                    stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
                    at = time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6
                    out[name] = max(out.get(name, 0.0), at)
        return out

    def declared_dead_pids(self, pids: dict[str, frozenset[int]]) -> tuple[frozenset[int], float | None]:
        """Of the workers' MCP server `pids` (taken before a fault), those of workers that were
        declared dead, and until when they were sent calls as owners (analyse's victims and
        `sent_before`)."""
        dead = self.declared_dead(list(pids))
        return frozenset(p for n in dead for p in pids[n]), max(dead.values(), default=None)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _tail(self, name: str) -> str:
        return self.log(name)[-1500:]

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            host = "ctl" if name in ("beat", "gateway") else "broker" if name == "delay" else name
            self.lab[host].stop(proc, timeout_s=20)
        if self.sentinel is not None:
            self.sentinel.stop()
