"""The local-process and Celery-pool providers against real `celery worker` processes, and the
leader lease: two autoscalers racing on the real broker, only one scales."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.integration
HOST = socket.gethostname()


@pytest.fixture
def clean_keys(broker: str) -> Iterator[redis.Redis]:
    from beat.autoscale import DECISIONS_KEY, LAST_CHANGE_KEY
    from beat.lock import LEASE_KEY

    client = redis.Redis.from_url(broker)
    keys = (DECISIONS_KEY, LAST_CHANGE_KEY, LEASE_KEY)
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


def _answering(names: set[str]) -> set[str]:
    from tasks import app

    return names & {k for r in app.control.ping(timeout=0.5) or [] for k in r}


def test_local_provider_starts_finds_and_stops_real_workers(broker: str, tmp_path: Path) -> None:
    from beat.providers.local import LocalProcessProvider
    from workers.launcher import wait_for

    prefix = f"lp{uuid.uuid4().hex[:6]}"

    def provider() -> LocalProcessProvider:
        return LocalProcessProvider(
            servers=["time"],
            state_dir=tmp_path / "state",
            log_dir=tmp_path,
            concurrency=2,
            name_prefix=prefix,
        )

    first = provider()
    try:
        first.scale_to(2)
        nodes = {f"{prefix}-1@{HOST}", f"{prefix}-2@{HOST}"}
        assert set(first.nodes()) == nodes
        assert wait_for(lambda: _answering(nodes) == nodes, 60), f"workers did not answer; logs in {tmp_path}"
        # A beat that restarts: a new provider on the same state dir finds both, starts none.
        again = provider()
        assert again.current() == 2
        again.scale_to(2)
        assert again.current() == 2
        # Down to one, removing the worker named: a warm stop, it exits by itself.
        again.scale_to(1, stop=[f"{prefix}-1@{HOST}"])
        assert again.current() == 1 and again.nodes() == [f"{prefix}-2@{HOST}"]
        assert wait_for(lambda: len(again.records()) == 1, 30), "the stopped worker did not exit"
        assert again.candidates({f"{prefix}-2@{HOST}": 5.0, "someone-else@h": 9.0}) == {
            f"{prefix}-2@{HOST}": 5.0
        }
        # The next one takes the free number again.
        again.scale_to(2)
        assert sorted(again.nodes()) == sorted(nodes)
    finally:
        first.stop_all()
        provider().stop_all()
    assert provider().current() == 0
    assert list((tmp_path / "state").glob("*.json")) == []


def test_celery_pool_provider_grows_and_shrinks_a_real_prefork_pool(broker: str, tmp_path: Path) -> None:
    from beat.providers import ProviderError
    from beat.providers.pool import CeleryPoolProvider
    from tasks import app
    from workers.launcher import WorkerProcess, wait_for

    node = f"pool{uuid.uuid4().hex[:6]}@{HOST}"
    threads_node = f"thr{uuid.uuid4().hex[:6]}@{HOST}"
    worker = WorkerProcess(node, ["time"], pool="prefork", concurrency=1, log_path=tmp_path / "p.log").start()
    threads = WorkerProcess(threads_node, ["time"], concurrency=2, log_path=tmp_path / "t.log").start()
    try:
        assert wait_for(lambda: _answering({node, threads_node}) == {node, threads_node}, 60)
        p = CeleryPoolProvider(app, workers=[node], timeout_s=3)
        assert p.current() == 1
        p.scale_to(3)
        assert wait_for(lambda: p.current() == 3, 30), f"pool is {p.current()}"
        p.scale_to(2, stop=[node])
        assert wait_for(lambda: p.current() == 2, 30), f"pool is {p.current()}"
        # Celery's threads pool cannot change size: a clear error, nothing changed.
        with pytest.raises(ProviderError, match=threads_node):
            CeleryPoolProvider(app, workers=[threads_node], timeout_s=3).scale_to(4)
    finally:
        worker.stop()
        threads.stop()


def test_two_autoscalers_racing_only_one_scales(broker: str, clean_keys: redis.Redis, tmp_path: Path) -> None:
    """Two beats on two hosts (own state dirs) evaluate at the same instant on the real broker:
    without the lease both would start the minimum's worker; with it, exactly one does."""
    from beat.autoscale import Autoscaler, recent_decisions
    from beat.lock import LeaderLease
    from beat.providers.local import LocalProcessProvider
    from tasks.config_file import ConfigFile

    section = ConfigFile.model_validate(
        {"autoscaling": {"enabled": True, "minInstances": 1, "maxInstances": 2, "cooldownS": 600}}
    ).autoscaling
    prefix = f"race{uuid.uuid4().hex[:6]}"
    providers = [
        LocalProcessProvider(
            servers=["time"],
            state_dir=tmp_path / f"beat{i}",
            log_dir=tmp_path,
            concurrency=1,
            name_prefix=f"{prefix}{i}",
        )
        for i in (1, 2)
    ]
    scalers = [
        Autoscaler(
            section,
            p,
            store_url=broker,
            broker_url=broker,
            servers=["time"],
            lease=LeaderLease(redis.Redis.from_url(broker), ttl_s=20),
        )
        for p in providers
    ]
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        barrier.wait()
        results[i] = scalers[i].evaluate()

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        acted = [i for i in (0, 1) if results[i] is not None]
        assert len(acted) == 1, results
        leader, other = acted[0], 1 - acted[0]
        assert results[leader].direction == "up" and results[leader].to_n == 1
        assert [p.current() for p in providers][leader] == 1
        assert providers[other].current() == 0, "the second beat scaled too"
        assert scalers[other].evaluate() is None, "the waiting beat acted while the leader holds the lease"
        # The leader goes away (released on close): the other takes over and keeps the cooldown.
        scalers[leader].lease.release()
        taken = scalers[other].evaluate()
        assert taken is not None and taken.direction == "up"  # its own provider runs none: below min
        again = scalers[other].evaluate()
        assert again is not None and again.direction == "hold" and again.code == "cooldown"
        decisions = recent_decisions(10)
        assert [d["direction"] for d in decisions[:3]] == ["hold", "up", "up"]
        assert all({"at", "from", "to", "reason", "provider", "triggers"} <= set(d) for d in decisions)
    finally:
        for p in providers:
            p.stop_all()


def test_a_hold_is_recorded_only_when_it_changes(
    broker: str, clean_keys: redis.Redis, tmp_path: Path
) -> None:
    from beat.autoscale import DECISIONS_KEY, Autoscaler
    from beat.providers.local import LocalProcessProvider
    from tasks.config_file import ConfigFile

    # Triggers out of reach: the session's workers (which run "time") carry other tests' load
    # and failed calls; this test is about recording holds, not about triggers.
    quiet = {"cpuPercent": 100, "memoryPercent": 100, "p95LatencyS": 3600, "errorRatePercent": 100}
    section = ConfigFile.model_validate(
        {"autoscaling": {"enabled": True, "minInstances": 0, "triggers": {**quiet, "queueDepth": 10**6}}}
    ).autoscaling
    provider = LocalProcessProvider(
        servers=["time"], state_dir=tmp_path, log_dir=tmp_path, name_prefix="none"
    )
    scaler = Autoscaler(section, provider, store_url=broker, broker_url=broker, servers=["time"])
    for _ in range(5):
        d = scaler.evaluate()
        assert d is not None and d.direction == "hold"
    assert clean_keys.llen(DECISIONS_KEY) == 1
    scaler.lease.release()


def test_the_autoscaler_measures_only_the_workers_of_its_servers(broker: str, tmp_path: Path) -> None:
    """Another pool's worker on the same broker (failing calls, a busy host) must not scale this
    one: the failure a full suite run showed, where earlier tests' errors fired the error rate."""
    from beat.autoscale import Autoscaler
    from beat.providers.local import LocalProcessProvider
    from tasks.config_file import ConfigFile
    from tasks.policy.scaling import WindowStats
    from tasks.registry import Registry, ServerHealth, WorkerBeat

    section = ConfigFile.model_validate({"autoscaling": {"enabled": True}}).autoscaling
    provider = LocalProcessProvider(
        servers=["ledger"], state_dir=tmp_path, log_dir=tmp_path, name_prefix="none"
    )
    scaler = Autoscaler(section, provider, store_url=broker, broker_url=broker, servers=["ledger"])
    registry = Registry(broker)
    now = time.time()

    def beat(node: str, server: str, errors: int, cpu: float) -> WorkerBeat:
        window = WindowStats(window_s=60, calls=100, errors=errors, buckets=(100,))
        return WorkerBeat(
            node=node, queue=f"worker.{node}", pid=1, capacity=4, in_flight=0, reserved=0,
            cpu_percent=cpu, memory_percent=10.0, beat_at_s=now,
            servers={server: ServerHealth(state="ready")}, calls_window=window,
        )  # fmt: skip

    other, mine = f"other-{uuid.uuid4().hex[:6]}@h", f"mine-{uuid.uuid4().hex[:6]}@h"
    try:
        registry.publish(beat(other, "time", errors=50, cpu=5.0), ttl_s=30)
        registry.publish(beat(mine, "ledger", errors=0, cpu=99.0), ttl_s=30)
        m = scaler.measure(now)
        assert (m.calls, m.errors) == (100, 0)
        assert [cpu for _, cpu in m.cpu_samples] == [99.0]
    finally:
        for node in (other, mine):
            registry.withdraw(node)
        scaler.lease.release()


def test_queue_depth_counts_every_priority_band(broker: str) -> None:
    from tasks import app
    from tasks.queues import queue_depths

    queue = f"depth-{uuid.uuid4().hex[:6]}"
    with app.producer_or_acquire() as producer:
        for priority in (0, 4, 7, 9, 9):
            app.send_task("agentful.ping", queue=queue, priority=priority, producer=producer)
    try:
        assert queue_depths(broker, [queue, "nothing-here"]) == {queue: 5, "nothing-here": 0}
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)


def test_rabbitmq_queue_depth(tmp_path: Path) -> None:
    from tasks.queues import queue_depths
    from tests.conftest import need, port_open

    need(port_open("127.0.0.1", 5672), "RabbitMQ at 127.0.0.1:5672")
    from kombu.connection import Connection

    url = "amqp://guest:guest@127.0.0.1:5672//"
    queue = f"agentful-depth-{uuid.uuid4().hex[:6]}"
    # Publisher confirms: every put is in the queue before it is counted (RabbitMQ is async).
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        q = conn.SimpleQueue(queue)
        for i in range(3):
            q.put({"i": i})
        try:
            assert queue_depths(url, [queue, f"{queue}-missing"]) == {queue: 3, f"{queue}-missing": 0}
        finally:
            q.queue.delete()
            q.close()
