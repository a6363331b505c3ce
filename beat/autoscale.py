"""Beat's autoscaler: measure the cluster, decide (tasks/policy/scaling.py), act through a
provider (beat/providers/), record the decision.

Where it runs: inside beat's own process. The schedule has an `autoscale` entry (task name
`agentful.autoscale`, every `autoscaling.intervalS`) so it shows with the others, but
`AgentfulScheduler` (celeryconfig's `beat_scheduler`) runs that entry itself instead of sending
it: the local-process provider must start workers on the host the operator chose for the control
loop (where `agentful beat` / `agentful up` runs), not on whichever worker took a control-queue
task, and a worker must never be the one that stops itself.

Only one beat acts: `AgentfulScheduler` runs any entry only while it holds the leader lease
(beat/lock.py); a second beat started by mistake waits. The time of the last change is kept in
Redis, so a beat that takes over keeps the cooldown.

Measurements, all from what workers already send: the heartbeats in the registry (CPU and
memory of each worker's host, whether it holds calls and since when it is idle, and a rolling
window of its calls: count, failures, latency histogram) and the broker's queue lengths.
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
from celery.beat import PersistentScheduler

from beat.lock import LeaderLease
from beat.providers import Provider, ProviderError, make_provider
from beat.providers.local import LocalProcessProvider
from tasks.catalog import is_redis_url
from tasks.errors import BrokerUnavailableError
from tasks.policy.scaling import Decision, Measurements, ScalingConfig, decide, merge_windows
from tasks.registry import Registry, worker_queue
from tasks.routing import CONTROL_QUEUE, server_queue
from tasks.telemetry import metrics

log = logging.getLogger(__name__)

AUTOSCALE_TASK = "agentful.autoscale"
DECISIONS_KEY = "agentful:scaling:decisions"
DECISIONS_KEPT = 50
LAST_CHANGE_KEY = "agentful:scaling:last_change"
# kombu's Redis transport keeps a queue's priority bands 3, 6, 9 in lists named <queue><sep><n>.
PRIORITY_SEP = "\x06\x16"
PRIORITY_BANDS = (3, 6, 9)


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)


def recent_decisions(n: int = 10) -> list[dict[str, Any]]:
    """The newest `n` scaling decisions, newest first (on the catalog store's Redis)."""
    from tasks.api import catalog_store

    store = catalog_store()
    if store is None or n <= 0:
        return []
    client = _client(store.url)
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


def broker_queue_depths(broker_url: str, queues: Sequence[str]) -> dict[str, int]:
    """Calls waiting in each queue: Redis LLEN of the queue and its priority-band lists;
    RabbitMQ a passive queue_declare's message_count (a queue not declared yet counts 0)."""
    if is_redis_url(broker_url):
        client = _client(broker_url)
        try:
            pipe = client.pipeline(transaction=False)
            for q in queues:
                pipe.llen(q)
                for band in PRIORITY_BANDS:
                    pipe.llen(f"{q}{PRIORITY_SEP}{band}")
            counts = [int(n) for n in pipe.execute()]
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read queue depths: {exc}") from exc
        finally:
            client.close()
        per = 1 + len(PRIORITY_BANDS)
        return {q: sum(counts[i * per : (i + 1) * per]) for i, q in enumerate(queues)}
    from kombu.connection import Connection
    from kombu.exceptions import OperationalError

    out: dict[str, int] = {}
    try:
        with Connection(broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            channel = conn.channel()
            for q in queues:
                try:
                    out[q] = int(channel.queue_declare(queue=q, passive=True).message_count)
                except conn.channel_errors:  # NOT_FOUND closes the channel
                    out[q] = 0
                    channel = conn.channel()
            channel.close()
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot read queue depths: {exc}") from exc
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
        self.client = _client(store_url)
        self.registry = Registry(store_url)
        self.lease = lease or LeaderLease(self.client, ttl_s=lease_ttl_s(section))
        self.clock = clock
        self._cpu: deque[tuple[float, float]] = deque()

    def queues(self, nodes: Sequence[str]) -> list[str]:
        return [CONTROL_QUEUE, *(server_queue(s) for s in self.servers), *(worker_queue(n) for n in nodes)]

    def measure(self, now: float) -> Measurements:
        alive = self.registry.alive()
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
        depth = sum(broker_queue_depths(self.broker_url, self.queues(sorted(alive))).values())
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


class AgentfulScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler that runs only while it holds the leader lease, and runs the
    `agentful.autoscale` entry in this process instead of sending it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lease: LeaderLease | None = None
        self._lease_tried = False
        self._leading: bool | None = None
        self._autoscaler: Autoscaler | None = None
        self._autoscaler_tried = False
        super().__init__(*args, **kwargs)
        self.max_interval: float = min(float(self.max_interval), self._ttl() / 3)

    def _ttl(self) -> float:
        from tasks.settings import get_config

        return lease_ttl_s(get_config().autoscaling)

    def _get_lease(self) -> LeaderLease | None:
        if not self._lease_tried:
            self._lease_tried = True
            from tasks.api import catalog_store

            store = catalog_store()
            if store is None:
                log.warning("no Redis broker or backend: no leader lease, this beat acts alone")
            else:
                self._lease = LeaderLease(_client(store.url), ttl_s=self._ttl())
        return self._lease

    def lead(self) -> bool:
        lease = self._get_lease()
        leading = True if lease is None else lease.hold()
        if leading != self._leading:
            if leading:
                log.info("beat: leading (lease %s)", lease.identity if lease else "none")
            else:
                holder = lease.holder() if lease else None
                log.warning("beat: another beat leads (%s); this one waits", holder)
            self._leading = leading
        return leading

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lead():
            return float(self.max_interval)
        return float(super().tick(*args, **kwargs))

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if entry.task == AUTOSCALE_TASK:  # not "Sending due task" every interval: it runs here
            self.apply_async(entry, producer=producer, advance=False)
            return
        super().apply_entry(entry, producer=producer)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task != AUTOSCALE_TASK:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            self.reserve(entry)
        if not self._autoscaler_tried:
            self._autoscaler_tried = True
            self._autoscaler = build_autoscaler(self.app, lease=self._get_lease())
        if self._autoscaler is not None:
            try:
                self._autoscaler.evaluate()
            except Exception:  # one bad evaluation must not stop beat
                log.exception("autoscaler evaluation failed")
        return None

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
        super().close()
