"""The broker as three hosts under Redis Sentinel, as docs/deployment.md "No single broker host"
sets it up: on each of r1, r2, r3 a redis-server (port 6380, a password, the append-only file
fsynced on every write) and a Sentinel (`redis-server sentinel.conf --sentinel`, port 26379,
quorum 2); r1 starts as the primary, r2 and r3 replicate it. Clients name all three Sentinels:

    sentinel://:PASSWORD@r1.lab:26379/0;sentinel://r2.lab:26379/0;sentinel://r3.lab:26379/0
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.hosts.lab import Lab

REDIS_PORT = 6380
SENTINEL_PORT = 26379
MASTER = "mymaster"
DOWN_AFTER_MS = 1000  # a primary unanswered this long is down, for that Sentinel
FAILOVER_TIMEOUT_MS = 10_000

# Run on the client host: the group is whole when the Sentinels agree on one primary, it has
# `replicas` replicas online and in sync, and every Sentinel knows the others. Prints the
# primary's address, or "" while not yet.
READY = """
import json, sys
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
once = {"socket_timeout": 2, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}
hosts, password, replicas = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
try:
    primaries = set()
    for host in hosts:
        s = redis.Redis(host, 26379, decode_responses=True, **once)
        state = s.sentinel_master("mymaster")
        if state.get("is_sdown") or state.get("is_odown"):
            raise SystemExit(print(""))
        primaries.add((state["ip"], int(state["port"])))
        if len(s.sentinel_sentinels("mymaster")) < len(hosts) - 1:
            raise SystemExit(print(""))
    if len(primaries) != 1:
        raise SystemExit(print(""))
    ip, port = next(iter(primaries))
    info = redis.Redis(ip, port, password=password, **once).info("replication")
    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
              and v.get("state") == "online" and v.get("lag", 9) <= 1]
    print(ip if info.get("role") == "master" and len(online) >= replicas else "")
except (redis.RedisError, OSError):
    print("")
"""


class SentinelGroup:
    def __init__(self, tmp: Path, lab: Lab, hosts: list[str], password: str) -> None:
        self.tmp = tmp
        self.lab = lab
        self.hosts = hosts
        self.password = password
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        first, *rest = (self.lab[h].fqdn for h in self.hosts)
        parts = [f"sentinel://:{self.password}@{first}:{SENTINEL_PORT}/0"]
        return ";".join(parts + [f"sentinel://{h}:{SENTINEL_PORT}/0" for h in rest])

    def start(self) -> SentinelGroup:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        primary = self.lab[self.hosts[0]]
        for name in self.hosts:
            host = self.lab[name]
            data = self.tmp / name / "redis"
            data.mkdir(parents=True, exist_ok=True)
            cmd = [
                server, "--port", str(REDIS_PORT), "--bind", host.ip, "--requirepass", self.password,
                "--masterauth", self.password, "--dir", str(data), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "",
            ]  # fmt: skip
            if name != self.hosts[0]:
                cmd += ["--replicaof", primary.ip, str(REDIS_PORT)]
            self.servers[name] = host.popen(cmd, env=dict(os.environ), log=self.tmp / f"{name}-redis.log")
        for name in self.hosts:
            host = self.lab[name]
            conf = self.tmp / name / "sentinel.conf"  # Sentinel rewrites it: one per host
            conf.write_text(
                f"port {SENTINEL_PORT}\nbind {host.ip}\ndir {self.tmp / name}\n"
                f"sentinel monitor {MASTER} {primary.ip} {REDIS_PORT} 2\n"
                f"sentinel auth-pass {MASTER} {self.password}\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            cmd = [server, str(conf), "--sentinel"]
            self.sentinels[name] = host.popen(
                cmd, env=dict(os.environ), log=self.tmp / f"{name}-sentinel.log"
            )
        if not self.wait_whole(len(self.hosts) - 1, timeout_s=60):
            raise RuntimeError(f"the Sentinel group did not come up: {self.log(self.hosts[0])[-1500:]}")
        return self

    def primary(self, replicas: int) -> str:
        """The host name of the primary all Sentinels name, once it has `replicas` in sync; ""."""
        hosts = [self.lab[h].ip for h in self.hosts if self.servers[h].poll() is None]
        done = self.lab["client"].run(
            [sys.executable, "-c", READY, json.dumps(hosts), self.password, str(replicas)],
            env=dict(os.environ),
            timeout_s=60,
        )
        ip = done.stdout.strip()
        return next((h for h in self.hosts if self.lab[h].ip == ip), "")

    def wait_whole(self, replicas: int, timeout_s: float = 60) -> str:
        """Wait for `primary(replicas)`; the primary's host name, or "" at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            primary = self.primary(replicas)
            if primary or time.monotonic() >= deadline:
                return primary
            time.sleep(0.5)

    def kill_host(self, name: str) -> None:
        """The host is gone: its link cut (no RST reaches anyone) and its processes killed."""
        self.lab.cut(name)
        for proc in (self.servers[name], self.sentinels[name]):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def pause(self, names: list[str]) -> None:
        for name in names:
            os.killpg(self.servers[name].pid, signal.SIGSTOP)

    def resume(self, names: list[str]) -> None:
        for name in names:
            os.killpg(self.servers[name].pid, signal.SIGCONT)

    def log(self, name: str) -> str:
        out = []
        for kind in ("redis", "sentinel"):
            path = self.tmp / f"{name}-{kind}.log"
            out.append(path.read_text(errors="replace") if path.exists() else "")
        return "\n".join(out)

    def stop(self) -> None:
        for name in self.hosts:
            for proc in (self.sentinels.get(name), self.servers.get(name)):
                if proc is not None:
                    self.lab[name].stop(proc, timeout_s=10)
