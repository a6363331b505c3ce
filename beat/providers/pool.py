"""`celery-pool`: grow and shrink the pools of running workers with Celery's own control
commands (`pool_grow` / `pool_shrink`). An instance is one pool process.

Only the prefork pool can change its size (Celery's threads and solo pools cannot; their reply
is an error, raised here as ProviderError), and not on a worker started with `--autoscale`
(Celery's own autoscaler owns its pool then). billiard's shrink removes idle processes only,
so a shrink never interrupts a call. Each worker keeps at least one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from beat.providers.base import ProviderError


class CeleryPoolProvider:
    name = "celery-pool"

    def __init__(self, app: Any, *, workers: Sequence[str] = (), timeout_s: float = 2.0) -> None:
        self.app = app
        self.workers = list(workers)
        self.timeout_s = timeout_s

    def sizes(self) -> dict[str, int]:
        """Pool processes per worker, from `inspect stats` (the processes it has now)."""
        inspect = self.app.control.inspect(destination=self.workers or None, timeout=self.timeout_s)
        try:
            stats: dict[str, Any] = inspect.stats() or {}
        except Exception as exc:
            raise ProviderError(f"cannot inspect the workers' pools: {exc}") from exc
        out: dict[str, int] = {}
        for node, info in stats.items():
            pool = info.get("pool") or {}
            procs = pool.get("processes")
            out[node] = len(procs) if isinstance(procs, list) else int(pool.get("max-concurrency") or 0)
        return out

    def current(self) -> int:
        return sum(self.sizes().values())

    def candidates(self, idle: Mapping[str, float]) -> dict[str, float]:
        return {n: s for n, s in idle.items() if not self.workers or n in self.workers}

    def _command(self, name: str, node: str, n: int) -> None:
        replies = self.app.control.broadcast(
            name, arguments={"n": n}, destination=[node], reply=True, timeout=self.timeout_s
        )
        answer = next((r[node] for r in replies or [] if node in r), None)
        if answer is None:
            raise ProviderError(f"{name} {n} on {node}: no reply within {self.timeout_s}s")
        if "error" in answer:
            raise ProviderError(f"{name} {n} on {node}: {answer['error']}")

    def scale_to(self, n: int, *, stop: Sequence[str] = ()) -> None:
        sizes = self.sizes()
        if not sizes:
            raise ProviderError("no worker answered: no pool to scale")
        delta = n - sum(sizes.values())
        plan: dict[str, int] = {}
        if delta > 0:  # one process at a time to the smallest pool
            for _ in range(delta):
                node = min(sizes, key=lambda k: (sizes[k], k))
                sizes[node] += 1
                plan[node] = plan.get(node, 0) + 1
        elif delta < 0:  # from the idle workers named first, then the largest pools
            order = [s for s in stop if s in sizes]
            for _ in range(-delta):
                shrinkable = [k for k in sizes if sizes[k] > 1]
                if not shrinkable:
                    break
                named = next((s for s in order if sizes[s] > 1), None)
                if named is not None:
                    order.remove(named)
                node = named if named is not None else max(shrinkable, key=lambda k: (sizes[k], k))
                sizes[node] -= 1
                plan[node] = plan.get(node, 0) - 1
        for node, change in sorted(plan.items()):
            if change > 0:
                self._command("pool_grow", node, change)
            elif change < 0:
                self._command("pool_shrink", node, -change)
