"""`compose`: the worker service's replicas through Docker Compose's own command line.

`docker compose [-f FILE] [-p PROJECT] up -d --scale worker=N --no-recreate worker`: Compose
adds or removes containers of that one service and leaves the running ones alone. A removed
container gets SIGTERM (Celery's warm shutdown: it finishes what it runs, hands back what it
reserved) and `stop_grace_period` before SIGKILL. Compose picks which containers go: it cannot be
told which one is idle, so here the policy's idle choice is advisory.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

from beat.providers.base import ProviderError

Runner = Callable[[list[str], float], str]


def run_command(argv: list[str], timeout_s: float) -> str:
    """Run a command; its stdout, or ProviderError with its stderr."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise ProviderError(f"{' '.join(argv)} exited {done.returncode}: {tail}")
    return done.stdout


class ComposeProvider:
    name = "compose"

    def __init__(
        self,
        *,
        command: Sequence[str] = ("docker", "compose"),
        file: str | None = None,
        project: str | None = None,
        service: str = "worker",
        timeout_s: float = 120.0,
        runner: Runner = run_command,
    ) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.runner = runner
        self.base = list(command)
        if file:
            self.base += ["-f", file]
        if project:
            self.base += ["-p", project]

    def ps_argv(self) -> list[str]:
        return [*self.base, "ps", "--status", "running", "--quiet", self.service]

    def scale_argv(self, n: int) -> list[str]:
        return [*self.base, "up", "--detach", "--scale", f"{self.service}={n}", "--no-recreate", self.service]

    def current(self) -> int:
        out = self.runner(self.ps_argv(), self.timeout_s)
        return len([line for line in out.splitlines() if line.strip()])

    def candidates(self, idle: Mapping[str, float]) -> dict[str, float]:
        return dict(idle)  # advisory: Compose chooses which containers to remove

    def scale_to(self, n: int, *, stop: Sequence[str] = ()) -> None:
        if n < 0:
            raise ProviderError(f"cannot scale {self.service} to {n}")
        self.runner(self.scale_argv(n), self.timeout_s)
