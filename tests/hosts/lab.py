"""Hosts on one machine: each a network namespace of its own (`ip netns`), with its own address,
network stack, host name (a UTS namespace) and /etc/hosts, all joined by a bridge that lives in a
namespace of its own too, so nothing of this touches the machine's own network and no packet
leaves for any other address.

    with Lab(tmp, ["broker", "w1", "w2"]) as lab:
        proc = lab["w1"].popen(["agentful", "worker"], env=..., log=...)
        lab.cut("w1")            # its link goes down: a partition (no RST, packets just vanish)
        lab.heal("w1")
        lab.delay_ms(2.0)        # 2 ms round trip between any two hosts (netem, 1 ms each way)
        lab.block("ctl", "broker")   # ctl can no longer reach broker (a blackhole route)

Host names resolve as `<name>.lab` on every host (/etc/netns/<ns>/hosts, which `ip netns exec`
mounts over /etc/hosts). Everything is removed on exit, and namespaces an earlier run left
behind (a killed test) are removed on the next start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

PREFIX = "agl"  # every namespace and interface this makes starts with it
DOMAIN = "lab"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """Why hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "root, for ip netns"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2 (ip) and util-linux (unshare)"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add is not allowed here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def sweep() -> None:
    """Remove what an earlier run left whose process is gone (it was killed mid-test)."""
    listed = _ip("netns", "list", check=False).stdout.split()
    for name in listed:
        owner = name.removeprefix(PREFIX).split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not psutil.pid_exists(int(owner)):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    index: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DOMAIN}"

    def command(self, cmd: list[str]) -> list[str]:
        """`cmd` as run on this host: in its namespace, under its own host name."""
        set_name = 'hostname "$0" && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            set_name,
            self.name,
            *cmd,
        ]

    def popen(
        self, cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` on this host (its own process group); its output goes to `log`."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(cmd),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, cmd: list[str], *, env: dict[str, str], timeout_s: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(cmd),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> int | None:
        """SIGTERM its group, then SIGKILL after `timeout_s`; its exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode


class Lab:
    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.tmp = tmp
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        net = 10 + os.getpid() % 200
        self.subnet = f"10.{net}.77"
        self.hosts = {
            name: Host(name, f"{self.tag}-{name}", f"{self.subnet}.{i + 2}", i)
            for i, name in enumerate(names)
        }
        self._made: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        sweep()
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _veth(self, host: Host, side: str) -> str:
        return f"{PREFIX}{os.getpid() % 100000}{side}{host.index}"[:15]

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h.ip} {h.fqdn} {h.name}\n" for h in self.hosts.values()
        )
        for host in self.hosts.values():
            _ip("netns", "add", host.ns)
            self._made.append(host.ns)
            etc = Path("/etc/netns") / host.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            inner, outer = self._veth(host, "h"), self._veth(host, "s")
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", host.ns)
            _ip("link", "set", outer, "netns", self.switch)
            _ip("-n", host.ns, "link", "set", inner, "name", "eth0")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", outer, "master", "br0")
            _ip("-n", self.switch, "link", "set", outer, "up")

    # --- faults ----------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """The host's link goes down at the switch: nothing in or out, and no one is told."""
        _ip("-n", self.switch, "link", "set", self._veth(self.hosts[name], "s"), "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self._veth(self.hosts[name], "s"), "up")

    def flap(self, name: str, *, times: int = 2, down_s: float = 3.0, up_s: float = 2.0) -> None:
        """The host's link goes down `down_s`, up `up_s`, `times` over."""
        for _ in range(times):
            self.cut(name)
            time.sleep(down_s)
            self.heal(name)
            time.sleep(up_s)

    def block(self, name: str, peer: str) -> None:
        """`name` can no longer reach `peer` (a blackhole route on `name`); others are untouched."""
        _ip("-n", self.hosts[name].ns, "route", "add", "blackhole", f"{self.hosts[peer].ip}/32")

    def unblock(self, name: str, peer: str) -> None:
        _ip("-n", self.hosts[name].ns, "route", "del", "blackhole", f"{self.hosts[peer].ip}/32", check=False)

    def delay_ms(self, rtt_ms: float) -> None:
        """`rtt_ms` round trip between any two hosts: half of it on each host's way out."""
        for host in self.hosts.values():
            if rtt_ms <= 0:
                subprocess.run(
                    ["ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                    capture_output=True, check=False,
                )  # fmt: skip
                continue
            subprocess.run(
                ["ip", "netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                 "delay", f"{rtt_ms / 2:g}ms", "limit", "100000"], check=True, capture_output=True,
            )  # fmt: skip

    # --- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGCONT)
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=10)
        for ns in reversed(self._made):
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError, psutil.Error):
                    psutil.Process(int(pid)).kill()
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self._made.clear()
