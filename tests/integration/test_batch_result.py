"""Waiting for a batch's results (tasks/batch_result.py) on a real Valkey of its own, with
Celery's own Redis result backend: results stored as a worker stores them, the batch channel's
wake-up, the reads without one, the first failure, a timeout, and a broker SIGKILLed and
restarted while a caller waits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from tasks.batch_result import BatchResult, channel
from tests.chaos.brokers import RedisProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess.valkey(tmp_path / "valkey").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def app(broker: RedisProcess) -> Celery:
    return Celery("batch-result-test", broker=broker.url, backend=broker.url, set_as_current=False)


def batch_of(app: Celery, n: int) -> tuple[BatchResult, str]:
    batch_id = str(uuid.uuid4())
    results = [app.AsyncResult(str(uuid.uuid4())) for _ in range(n)]
    return BatchResult(results, {batch_id: [r.id for r in results]}), batch_id


def store(app: Celery, result: Any, value: Any, state: str = states.SUCCESS) -> None:
    app.backend.store_result(result.id, value, state)


def waiting(batch: BatchResult, **options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["values"] = batch.get(**options)
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_results_stored_before_and_after_the_wait_in_order(app: Celery) -> None:
    batch, batch_id = batch_of(app, 5)
    store(app, batch.results[3], "early")  # before the caller subscribes: read at once
    thread, out = waiting(batch, timeout=30, interval=5)
    time.sleep(0.2)
    for i in (0, 1, 2, 4):
        store(app, batch.results[i], f"v{i}")
    app.backend.client.publish(channel(batch_id), 1)  # the worker's wake-up
    thread.join(timeout=30)
    assert out == {"values": ["v0", "v1", "v2", "early", "v4"]}
    assert [r.state for r in batch.results] == [states.SUCCESS] * 5
    assert batch.results[3].result == "early"  # each AsyncResult holds its own


def test_without_a_wake_up_the_pending_calls_are_read_every_interval(app: Celery) -> None:
    """A call retried alone, or a wake-up lost: nothing is published on the batch channel."""
    batch, _ = batch_of(app, 3)
    thread, out = waiting(batch, timeout=30, interval=0.1)
    for r in batch.results:
        store(app, r, r.id)
    thread.join(timeout=30)
    assert out == {"values": [r.id for r in batch.results]}


def test_the_first_failure_raises_without_waiting_for_the_rest(app: Celery) -> None:
    batch, batch_id = batch_of(app, 3)
    store(app, batch.results[0], "ok")
    store(app, batch.results[1], ValueError("the tool said no"), states.FAILURE)
    with pytest.raises(ValueError, match="the tool said no"):
        batch.get(timeout=30)
    assert batch.results[2].state == states.PENDING  # never stored: not waited for
    store(app, batch.results[2], "late")
    app.backend.client.publish(channel(batch_id), 1)
    values = batch.get(timeout=30, propagate=False)
    assert values[0] == "ok" and isinstance(values[1], ValueError) and values[2] == "late"


def test_a_timeout_raises_celerys_timeout(app: Celery) -> None:
    batch, _ = batch_of(app, 2)
    store(app, batch.results[0], "only one")
    with pytest.raises(CeleryTimeoutError):
        batch.get(timeout=0.5, interval=0.1)


def test_a_broker_killed_and_restarted_while_waiting(app: Celery, broker: RedisProcess) -> None:
    batch, batch_id = batch_of(app, 4)
    store(app, batch.results[0], "before")
    thread, out = waiting(batch, timeout=60, interval=0.2)
    time.sleep(0.5)
    broker.kill()  # SIGKILL: the caller's subscription and connection are gone
    time.sleep(1.0)
    assert thread.is_alive() and not out, out
    broker.start()  # the same port and data (AOF)
    for i in (1, 2, 3):
        store(app, batch.results[i], f"after{i}")
    app.backend.client.publish(channel(batch_id), 1)
    thread.join(timeout=60)
    assert out == {"values": ["before", "after1", "after2", "after3"]}


def test_another_result_backend_waits_the_way_celery_does(tmp_path: Path) -> None:
    """Not Redis (here Celery's filesystem backend): Celery's own barrier and join."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    app = Celery("batch-result-fs", backend=f"file://{results_dir}", set_as_current=False)
    results = [app.AsyncResult(str(uuid.uuid4())) for _ in range(3)]
    batch = BatchResult(results, {"b": [r.id for r in results]})
    for i, r in enumerate(results):
        app.backend.store_result(r.id, i, states.SUCCESS)
    assert batch.get(timeout=10, interval=0.05) == [0, 1, 2]


def test_a_call_sent_alone_wakes_the_wait_on_its_own_channel(app: Celery) -> None:
    """A call that travelled alone (a batch of one) is in no batch message: its own result
    channel, which Celery's store publishes on, wakes the wait, not the hour-long interval."""
    result = app.AsyncResult(str(uuid.uuid4()))
    batch = BatchResult([result], {})
    thread, out = waiting(batch, timeout=20, interval=3600)
    time.sleep(0.2)
    store(app, result, "alone")
    thread.join(timeout=20)
    assert out == {"values": ["alone"]}
