"""`agentful status`: one snapshot of the cluster, as tables, as JSON, or live.

Everything comes from what the cluster already publishes, with no broadcast round trip:
- workers, their servers (state, health, breaker, latency), calls in flight and reserved, CPU
  and memory: the registry of heartbeats (tasks/registry.py);
- queue depths: the broker itself (tasks/queues.py: every priority band on Redis, a passive
  declare on RabbitMQ); queues are the control queue, each server's and each known worker's,
  plus, on Redis, any other agentful queue kombu has a binding for that holds calls (a server
  nobody runs now);
- scaling decisions: the list beat's autoscaler writes (`beat.autoscale.recent_decisions`).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tasks.errors import BrokerUnavailableError

# -- collecting -----------------------------------------------------------------------------------


def collect(decisions: int = 5) -> dict[str, Any]:
    """One JSON-ready snapshot of the cluster. Raises BrokerUnavailableError."""
    from beat.autoscale import recent_decisions
    from tasks import app
    from tasks.api import catalog_store
    from tasks.catalog import safe_url
    from tasks.queues import agentful_queues, bound_queues, queue_depths
    from tasks.registry import Registry
    from tasks.settings import get_config

    store = catalog_store()
    if store is None:
        raise BrokerUnavailableError("agentful status needs a Redis or Valkey broker or result backend")
    registry = Registry(store.url)
    now = time.time()
    alive = registry.alive()
    dead = registry.dead()
    workers = [
        {**asdict(beat), "beat_age_s": round(now - beat.beat_at_s, 3)} for _, beat in sorted(alive.items())
    ]
    names = sorted({s for b in alive.values() for s in b.servers} | set(get_config().servers))
    queues = agentful_queues(names, [*alive, *dead])
    broker_url = str(app.conf.broker_url)
    # Queues kombu declared once and nobody knows now (a server or worker long gone): only shown
    # while calls wait in them; bindings are never deleted, so the empty ones would pile up.
    found = [q for q in bound_queues(broker_url) if q not in queues]
    depths = queue_depths(broker_url, queues + found)
    depths = {q: n for q, n in depths.items() if n or q not in found}
    return {
        "at": now,
        "broker": safe_url(broker_url),
        "workers": workers,
        "dead_workers": dead,
        "servers": _servers(names, workers),
        "queues": depths,
        "in_flight": sum(w["in_flight"] for w in workers),
        "reserved": sum(w["reserved"] for w in workers),
        "capacity": sum(w["capacity"] for w in workers),
        "scaling_decisions": recent_decisions(decisions, store_url=store.url),
    }


def _servers(names: list[str], workers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server, across the workers that run it."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [(w["node"], w["servers"][name]) for w in workers if name in w["servers"]]
        out[name] = {
            "workers": len(runs),
            "ready": sum(1 for _, h in runs if h["state"] == "ready"),
            "healthy": sum(1 for _, h in runs if h["healthy"]),
            "breakers": {node: h["breaker"] for node, h in runs if h["breaker"] != "closed"},
            "in_flight": sum(h["in_flight"] for _, h in runs),
            "calls": sum(h["calls"] for _, h in runs),
            "errors": sum(h["errors"] for _, h in runs),
        }
    return out


# -- rendering ------------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _server_cell(name: str, h: dict[str, Any]) -> str:
    cell = f"{name}:{h['state']}"
    if h.get("latency_ms") is not None:
        cell += f" {h['latency_ms']:.1f}ms"
    if h.get("in_flight"):
        cell += f" ({h['in_flight']} in flight)"
    if not h.get("healthy", True):
        cell += " [red]unhealthy[/]"
    if h.get("breaker", "closed") != "closed":
        cell += f" [red]breaker {h['breaker']}[/]"
    return cell


def render(snap: dict[str, Any]) -> RenderableType:
    """The snapshot as rich tables: summary, workers, servers, queues, scaling decisions."""
    now = float(snap["at"])
    columns = ("worker", "servers", "in flight", "reserved", "cpu %", "mem %", "heartbeat")
    workers = Table(*columns, title="workers")
    for w in snap["workers"]:
        servers = ", ".join(_server_cell(n, h) for n, h in sorted(w["servers"].items()))
        workers.add_row(
            w["node"],
            servers or "none",
            f"{w['in_flight']}/{w['capacity']}",
            str(w["reserved"]),
            f"{w['cpu_percent']:.0f}",
            f"{w['memory_percent']:.0f}",
            _ago(w["beat_age_s"]),
        )
    for node in snap["dead_workers"]:
        workers.add_row(node, "[red]no heartbeat[/]", "", "", "", "", "[red]dead[/]")

    by_server = Table(
        "server", "workers", "ready", "healthy", "breakers", "in flight", "calls", "errors", title="servers"
    )
    for name, s in sorted(snap["servers"].items()):
        breakers = ", ".join(f"{node} {state}" for node, state in sorted(s["breakers"].items()))
        healthy = f"{s['healthy']}/{s['workers']}"
        by_server.add_row(
            name,
            str(s["workers"]) if s["workers"] else "[yellow]0[/]",
            f"{s['ready']}/{s['workers']}",
            healthy if s["healthy"] == s["workers"] else f"[red]{healthy}[/]",
            f"[red]{breakers}[/]" if breakers else "all closed",
            str(s["in_flight"]),
            str(s["calls"]),
            str(s["errors"]),
        )

    queues = Table("queue", "waiting", title="queues")
    for name, n in snap["queues"].items():
        queues.add_row(name, f"[bold]{n}[/]" if n else "0")

    decisions = Table("when", "direction", "workers", "reason", "provider", title="scaling decisions")
    for d in snap["scaling_decisions"]:
        if "unreadable" in d:
            decisions.add_row("?", "?", "", f"unreadable entry: {d['unreadable']}", "")
            continue
        at = d.get("at")
        decisions.add_row(
            _ago(now - float(at)) if isinstance(at, int | float) else "?",
            str(d.get("direction", "?")),
            f"{d.get('from', '?')} -> {d.get('to', '?')}",
            str(d.get("reason", "")),
            str(d.get("provider", "")),
        )
    if not snap["scaling_decisions"]:
        decisions.add_row("", "none yet", "", "", "")

    summary = Text(
        f"broker {snap['broker']}  |  {len(snap['workers'])} workers alive, {len(snap['dead_workers'])} dead"
        f"  |  in flight {snap['in_flight']}/{snap['capacity']}, reserved {snap['reserved']}"
        f"  |  queued {sum(snap['queues'].values())}"
        f"  |  {time.strftime('%H:%M:%S', time.localtime(now))}"
    )
    return Group(summary, workers, by_server, queues, decisions)


def run(*, watch: bool, as_json: bool, decisions: int, interval_s: float, console: Console) -> None:
    """Print one snapshot, or keep printing (JSON lines) / redrawing (rich Live) until Ctrl-C."""
    if watch:
        _interrupt_on_sigterm()
    if as_json:
        if not watch:
            console.print_json(json.dumps(collect(decisions)))
            return
        while True:  # one JSON line per snapshot, for scripts that follow the cluster
            print(json.dumps(collect(decisions)), flush=True)
            time.sleep(interval_s)
    if not watch:
        console.print(render(collect(decisions)))
        return
    if not console.is_terminal:  # piped or logged: Live would draw nothing; print each snapshot
        while True:
            console.print(render(collect(decisions)))
            console.rule()
            time.sleep(interval_s)
    from rich.live import Live

    with Live(render(collect(decisions)), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval_s)
            live.update(render(collect(decisions)))


def _interrupt_on_sigterm() -> None:
    """SIGTERM and SIGINT end --watch like Ctrl-C, even where the shell ignored SIGINT (`cmd &`)."""

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
