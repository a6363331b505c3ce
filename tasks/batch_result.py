"""Waiting for a batch's results: one subscription per batch message, not one per call.

Celery's `ResultSet.get` on Redis subscribes to every call's result channel (one SUBSCRIBE
round trip and one message each): for the 2000 calls of one `call_tools`, the caller spent more
CPU waiting than the worker spent running them (docs/performance.md). A worker that stores a
batch's results (tasks/batch.py) publishes once more, on the batch's own channel
(`channel(batch_id)`); `BatchResult` subscribes to the channels of the batch messages it sent
(and to the own result channel of a call sent alone) and, on each message, reads that batch's
results in one MGET.

Every call keeps its own result key, so nothing depends on that one message: every `interval`
without one, the calls still pending are read again in one MGET. That covers a call that went
back to the queue alone (its retry, a call handed on to the worker that still runs it), a batch
revoked before it ran, and a notification lost with a broker connection. Each call's
AsyncResult is as Celery's: `results[i].get()`, `.state`, `.id` keep working.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet, assert_will_not_block
from vine import barrier

CHANNEL_PREFIX = "agentful:batch-done:"
_MGET_CHUNK = 500  # keys in one MGET: bounds one reply's size


def _text(name: str | bytes) -> str:
    """A channel or key name as text (redis-py gives bytes, Celery builds its keys as bytes)."""
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def channel(batch_id: str) -> str:
    """The channel a worker publishes on once it stored results of batch message `batch_id`."""
    return CHANNEL_PREFIX + batch_id


class BatchResult(ResultSet):  # type: ignore[misc]
    """The ResultSet of `call_tools`: its calls' AsyncResults in order; `batches` maps each batch
    message's id to the ids of its calls (calls sent alone are in none)."""

    def __init__(
        self, results: list[AsyncResult], batches: Mapping[str, Iterable[str]], **kwargs: Any
    ) -> None:
        # Celery's default barrier makes every result a pending one of the backend: on Redis one
        # SUBSCRIBE per call, the very cost this class avoids; the wait below readies each result
        # instead. Any other backend keeps Celery's barrier (its `get` is Celery's own).
        if results and isinstance(results[0].backend, RedisBackend):
            kwargs.setdefault("ready_barrier", barrier())
        super().__init__(results, **kwargs)
        self.batches = {batch: list(ids) for batch, ids in batches.items()}

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Any = None,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """Every call's result, in order (see `ResultSet.get`): the first failure raises when
        `propagate`. `interval`: how long without a batch's message before the pending calls
        are read anyway. `callback(task_id, value)` instead of a list, as Celery's."""
        if disable_sync_subtasks:
            assert_will_not_block()
        if not self.results:
            return []
        backend = self.results[0].backend
        if not isinstance(backend, RedisBackend):  # Celery's own way
            join = ResultSet.join_native if self.supports_native_join else ResultSet.join
            options = {"timeout": timeout, "propagate": propagate, "interval": interval, "callback": callback}
            values: list[Any] = join(self, disable_sync_subtasks=disable_sync_subtasks, **options, **kwargs)
            return values
        self._wait(backend, timeout, max(0.01, interval), propagate)
        if not self._on_full.ready:
            self._on_full.finalize()  # `then()` callbacks of the set, as Celery's barrier would
        values = []
        for result in self.results:
            value = result.result
            if propagate and result.state in states.PROPAGATE_STATES:
                raise value
            if callback is not None:
                callback(result.id, value)
            values.append(value)
        return [] if callback is not None else values

    join_native = get

    def _wait(self, backend: Any, timeout: float | None, interval: float, propagate: bool) -> None:
        """Until every call is ready; with `propagate`, until the first failure, which raises
        (as Celery's join does: the calls still running are not waited for). A lost broker
        connection is not an error: the wait subscribes and reads again until `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        by_id = {r.id: r for r in self.results}
        pending = {r.id for r in self.results if not r._cache}
        # What wakes the wait: a batch's channel for its calls; a call sent alone, its own result
        # channel (Celery's store publishes on the result key), so it is not read only by polling.
        wake = {channel(b): ids for b, ids in self.batches.items()}
        batched = {i for ids in self.batches.values() for i in ids}
        wake.update({_text(backend.get_key_for_task(i)): [i] for i in pending if i not in batched})
        pubsub = None
        try:
            while pending:
                try:
                    if pubsub is None:
                        pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
                        if wake:
                            pubsub.subscribe(*wake)
                        ids = list(pending)  # stored before the subscription: read them all
                    else:
                        ids = self._next(pubsub, wake, pending, self._left(deadline, interval))
                    ready = self._read(backend, by_id, pending, ids)
                except (redis.ConnectionError, redis.TimeoutError):
                    if pubsub is not None:
                        pubsub.close()
                        pubsub = None
                    time.sleep(self._left(deadline, interval))  # the broker restarts: try again
                    continue
                for task_id in ready if propagate else ():
                    if by_id[task_id].state in states.PROPAGATE_STATES:
                        raise by_id[task_id].result
        finally:
            if pubsub is not None:
                pubsub.close()

    @staticmethod
    def _left(deadline: float | None, interval: float) -> float:
        """How long to wait next: `interval`, or what is left of the timeout (which raises at 0)."""
        if deadline is None:
            return interval
        left = deadline - time.monotonic()
        if left <= 0:
            raise CeleryTimeoutError("The operation timed out.")
        return min(interval, left)

    @staticmethod
    def _next(pubsub: Any, wake: dict[str, list[str]], pending: set[str], wait_s: float) -> list[str]:
        """The calls to read next: those of the channel a message came on (a batch's, once its
        worker stored results; a lone call's own); every pending one after `wait_s` without one."""
        message = pubsub.get_message(timeout=wait_s)
        if message is None:
            return list(pending)
        return [i for i in wake.get(_text(message["channel"]), ()) if i in pending]

    @staticmethod
    def _read(backend: Any, by_id: dict[str, AsyncResult], pending: set[str], ids: list[str]) -> list[str]:
        """The stored results of `ids` (MGET); the ready ones set on their AsyncResults and
        returned, in the order of `ids`."""
        ready = []
        for start in range(0, len(ids), _MGET_CHUNK):
            chunk = ids[start : start + _MGET_CHUNK]
            values = backend.client.mget([backend.get_key_for_task(i) for i in chunk])
            for task_id, value in zip(chunk, values, strict=True):
                if value is None:
                    continue
                meta = backend.decode(value)  # _maybe_set_cache turns a stored error into its exception
                if isinstance(meta, dict) and meta.get("status") in states.READY_STATES:
                    by_id[task_id]._maybe_set_cache(meta)
                    pending.discard(task_id)
                    ready.append(task_id)
        return ready
