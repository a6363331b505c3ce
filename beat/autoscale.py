"""Beat's autoscaler: measure the cluster, decide (tasks/policy/scaling.py), act through a
provider (beat/providers/), record the decision.

Where it runs: inside beat's own process. The schedule has an `autoscale` entry (task name
`agentful.autoscale`, every `autoscaling.intervalS`) so it shows with the others, but beat's
scheduler (beat/scheduler.py `AgentfulScheduler`, celeryconfig's `beat_scheduler`) runs that entry
itself instead of sending it: the local-process provider must start workers on the host the
operator chose for the control loop (where `agentful beat` / `agentful up` runs), not on whichever
worker took a control-queue task, and a worker must never be the one that stops itself.

Only one beat acts: the scheduler runs any entry only while it holds the leader lease
(beat/lock.py); a second beat started by mistake waits. The time of the last change is kept in
Redis, so a beat that takes over keeps the cooldown.

Measurements, all from what workers already send: the heartbeats in the registry (CPU and
memory of each worker's host, whether it holds calls and since when it is idle, and a rolling
window of its calls: count, failures, latency histogram) and the broker's queue lengths
(tasks/queues.py).
Decisions go to the capped Redis list `agentful:scaling:decisions` (newest first, 50 kept;
`recent_decisions(n)` reads it); a hold is written only when it differs from the last entry.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from beat.lock import LeaderLease
from beat.providers import Provider, ProviderError, make_provider
from beat.providers.local import LocalProcessProvider
from tasks.errors import BrokerUnavailableError
from tasks.policy.scaling import Decision, Measurements, ScalingConfig, decide, merge_windows
from tasks.queues import agentful_queues, queue_depths
from tasks.redisconn import connect
from tasks.registry import Registry
from tasks.telemetry import metrics

log = logging.getLogger(__name__)

DECISIONS_KEY = "agentful:scaling:decisions"
DECISIONS_KEPT = 50
LAST_CHANGE_KEY = "agentful:scaling:last_change"


def redis_client(url: str) -> redis.Redis:
    return connect(url, socket_connect_timeout=3, socket_timeout=5)


def recent_decisions(n: int = 10, *, store_url: str | None = None) -> list[dict[str, Any]]:
    """The newest `n` scaling decisions, newest first (on `store_url`, else the catalog store's
    Redis); an entry that is not a JSON object is skipped."""
    if store_url is None:
        from tasks.api import catalog_store

        store = catalog_store()
        store_url = store.url if store is not None else None
    if store_url is None or n <= 0:
        return []
    client = redis_client(store_url)
    try:
        raw: list[bytes] = client.lrange(DECISIONS_KEY, 0, n - 1)  # type: ignore[assignment]
    except redis.RedisError as exc:
        raise BrokerUnavailableError(f"cannot read scaling decisions: {exc}") from exc
    finally:
        client.close()
    out: list[dict[str, Any]] = []
    for item in raw:
        try:
            entry = json.loads(item)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def lease_ttl_s(section: Any) -> float:
    """Long enough to outlast one evaluation: a `docker compose up` may take its whole timeout."""
    slow = section.compose.timeout_s if section.provider == "compose" else 0.0
    return max(15.0, slow + 10.0)


class Autoscaler:
    """One evaluation: measure, decide, act, record. Acts only while `lease` is held."""

    def __init__(
        self,
        section: Any,
        provider: Provider,
        *,
        store_url: str,
        broker_url: str,
        servers: Sequence[str],
        lease: LeaderLease | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = ScalingConfig.from_section(section)
        self.provider = provider
        self.broker_url = broker_url
        self.servers = list(servers)
        self.client = redis_client(store_url)
        self.registry = Registry(store_url)
        self.lease = lease or LeaderLease(self.client, ttl_s=lease_ttl_s(section))
        self.clock = clock
        self._cpu: deque[tuple[float, float]] = deque()

    def measure(self, now: float) -> Measurements:
        # The pool this autoscaler manages: workers serving one of its servers. Workers of other
        # pools on the same broker (their load, their failing calls) are not its business.
        mine = set(self.servers)
        alive = {node: beat for node, beat in self.registry.alive().items() if set(beat.servers) & mine}
        beats = list(alive.values())
        if beats:
            self._cpu.append((now, sum(b.cpu_percent for b in beats) / len(beats)))
        # Keep the readings of the sustain period and the last one before it.
        start = now - self.config.cpu_sustain_s
        while len(self._cpu) > 1 and self._cpu[1][0] <= start:
            self._cpu.popleft()
        calls, errors, buckets = merge_windows([b.calls_window for b in beats if b.calls_window is not None])
        idle = {
            b.node: max(0.0, now - b.idle_since_s)
            for b in beats
            if b.idle_since_s is not None and b.in_flight == 0 and b.reserved == 0
        }
        depth = sum(queue_depths(self.broker_url, agentful_queues(self.servers, alive)).values())
        return Measurements(
            cpu_samples=tuple(self._cpu),
            memory_percent=max((b.memory_percent for b in beats), default=None),
            queue_depth=depth,
            calls=calls,
            errors=errors,
            latency_buckets=buckets,
            idle=idle,
        )

    def last_change_at(self) -> float | None:
        raw = self.client.get(LAST_CHANGE_KEY)
        return float(raw) if isinstance(raw, bytes | str) else None

    def evaluate(self) -> Decision | None:
        """None when another beat leads or the cluster cannot be read; else the decision."""
        if not self.lease.hold():
            return None
        now = self.clock()
        try:
            m = self.measure(now)
            instances = self.provider.current()
            m = replace(m, idle=self.provider.candidates(m.idle))
            last = self.last_change_at()
        except (BrokerUnavailableError, ProviderError, redis.RedisError) as exc:
            log.warning("autoscaler: cannot measure the cluster: %s", exc)
            return None
        decision = decide(m, instances=instances, last_change_at=last, config=self.config, now=now)
        error: str | None = None
        if decision.changes:
            if not self.lease.hold():  # lost it while measuring: the new leader decides
                return None
            try:
                self.provider.scale_to(decision.to_n, stop=decision.stop)
                self.client.set(LAST_CHANGE_KEY, repr(now))
            except (ProviderError, redis.RedisError) as exc:
                error = str(exc)
                name = self.provider.name
                log.error("autoscaler: %s %d -> %d failed: %s", name, instances, decision.to_n, exc)
        self.record(decision, now, error)
        self.count(decision, error)
        return decision

    def record(self, decision: Decision, at: float, error: str | None = None) -> bool:
        """Push the decision to the capped list; a hold only when it differs from the last entry."""
        entry = decision.to_json(at=at, provider=self.provider.name)
        if error:
            entry["error"] = error
        if decision.direction == "hold" and not error:
            head = self.client.lindex(DECISIONS_KEY, 0)
            try:
                last = json.loads(head) if isinstance(head, bytes | str) else None
            except ValueError:
                last = None
            if isinstance(last, dict) and all(last.get(k) == entry[k] for k in ("direction", "code", "from")):
                return False
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(DECISIONS_KEY, json.dumps(entry))
        pipe.ltrim(DECISIONS_KEY, 0, DECISIONS_KEPT - 1)
        pipe.execute()
        level = logging.INFO if decision.changes or error else logging.DEBUG
        d = decision
        log.log(level, "autoscaler: %s %d -> %d: %s", d.direction, d.from_n, d.to_n, d.reason)
        return True

    def count(self, decision: Decision, error: str | None) -> None:
        outcome = "cooldown" if decision.code == "cooldown" else decision.direction
        metrics.SCALING_EVALUATIONS.labels(outcome=outcome).inc()
        if decision.changes and error is None:
            metrics.SCALING_DECISIONS.labels(direction=decision.direction).inc()
            if decision.code == "idle":
                for node in decision.stop:
                    metrics.IDLE_STOPS.labels(worker=node).inc()
        metrics.DESIRED_WORKERS.set(decision.to_n)


def build_autoscaler(app: Any, lease: LeaderLease | None = None) -> Autoscaler | None:
    """The autoscaler of this beat from the config file; None (logged) if it cannot run here."""
    from tasks.api import catalog_store
    from tasks.settings import get_config, get_settings

    config, settings = get_config(), get_settings()
    section = config.autoscaling
    store = catalog_store()
    if store is None:
        log.error("autoscaling needs Redis (broker or result backend) for the registry: not started")
        return None
    servers = list(section.local.servers) if section.local.servers is not None else list(config.servers)
    provider = make_provider(section, app=app, data_dir=settings.data_dir, servers=servers)
    broker = str(app.conf.broker_url)
    return Autoscaler(section, provider, store_url=store.url, broker_url=broker, servers=servers, lease=lease)


def local_provider() -> LocalProcessProvider | None:
    """The local-process provider this host's beat uses, if autoscaling is on with it (for
    `agentful up`, which stops the workers beat started when it stops)."""
    from tasks.settings import get_config, get_settings

    section = get_config().autoscaling
    if not section.enabled or section.provider != "local":
        return None
    servers = list(section.local.servers) if section.local.servers is not None else list(get_config().servers)
    provider = make_provider(section, app=None, data_dir=get_settings().data_dir, servers=servers)
    return provider if isinstance(provider, LocalProcessProvider) else None
