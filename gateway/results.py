"""Waiting for Celery results on the event loop: one Redis pub/sub connection for every call.

Celery's Redis result backend stores a result with `SET celery-task-meta-<id>` and, in the same
pipeline, `PUBLISH celery-task-meta-<id>` (celery/backends/redis.py `RedisBackend._set`). The
gateway pattern-subscribes to `celery-task-meta-*` once, at start, so a call's result reaches
the coroutine waiting for it with no thread per call, no per-call SUBSCRIBE round trip and no
race between publishing a task and subscribing to its channel. `AsyncResult.get()` would block
the event loop (or need a thread per call); Celery's own ResultConsumer is synchronous.

Progress events of a call (`tasks.progress.channel(task_id)`) arrive on the same connection:
the waiter subscribes to a call's progress channel before the call is queued.

Nothing is lost to a dropped connection: on reconnect, and every `sweep_s` for calls waiting
longer than that, the stored result keys are read (MGET) as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from celery import states

from tasks.redisconn import connect_async

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    since: float
    progress: ProgressFn | None = None
    progress_channel: str | None = None
    progress_queue: asyncio.Queue[dict[str, Any]] | None = None


@dataclass
class ResultWaiter:
    """Futures for Celery results (their decoded meta dicts), resolved from Redis pub/sub."""

    url: str
    key_prefix: str = "celery-task-meta-"
    sweep_s: float = 2.0
    _client: aioredis.Redis | None = None
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _progress_channels: dict[str, str] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None
    _sweeper: asyncio.Task[None] | None = None
    _pubsub: Any = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._client = connect_async(self.url, socket_connect_timeout=3, health_check_interval=30)
        self._ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read_forever(), name="gateway-results")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="gateway-results-sweep")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=10)
        except TimeoutError:
            log.warning("result channel %s not subscribed within 10 s; falling back to polling", self.url)

    async def stop(self) -> None:
        for task in (self._reader, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("ResultWaiter.start() was not awaited")
        return self._client

    async def expect(
        self, task_id: str, *, progress: ProgressFn | None = None, progress_channel: str = ""
    ) -> None:
        """Register interest in `task_id` BEFORE its task is published (progress needs that)."""
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), time.monotonic(), progress)
        self._pending[task_id] = pending
        if progress is not None and progress_channel and self._pubsub is not None:
            pending.progress_channel = progress_channel
            pending.progress_queue = asyncio.Queue()
            self._progress_channels[progress_channel] = task_id
            await self._pubsub.subscribe(progress_channel)

    def forget(self, task_id: str) -> None:
        pending = self._pending.pop(task_id, None)
        if pending is not None and pending.progress_channel:
            self._progress_channels.pop(pending.progress_channel, None)
            if self._pubsub is not None:
                task = asyncio.get_running_loop().create_task(
                    self._pubsub.unsubscribe(pending.progress_channel)
                )
                task.add_done_callback(_log_failure)

    async def wait(self, task_id: str, timeout_s: float | None) -> dict[str, Any]:
        """The result meta of a task registered with `expect` (forwarding its progress)."""
        pending = self._pending.get(task_id)
        if pending is None:
            raise KeyError(task_id)
        try:
            if pending.progress_queue is None or pending.progress is None:
                return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
            return await asyncio.wait_for(self._wait_with_progress(pending), timeout_s)
        finally:
            self.forget(task_id)

    async def _wait_with_progress(self, pending: _Pending) -> dict[str, Any]:
        assert pending.progress_queue is not None and pending.progress is not None
        while True:
            getter = asyncio.ensure_future(pending.progress_queue.get())
            done, _ = await asyncio.wait({getter, pending.future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await pending.progress(getter.result())
                continue
            getter.cancel()
            # The worker publishes every progress event before it stores the result.
            while not pending.progress_queue.empty():
                await pending.progress(pending.progress_queue.get_nowait())
            return pending.future.result()

    async def fetch(self, task_id: str) -> dict[str, Any] | None:
        """The stored meta of a task, or None when nothing is stored (pending or unknown)."""
        raw = await self.client.get(self.key_prefix + task_id)
        return None if raw is None else _decode(raw)

    async def fetch_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        if not task_ids:
            return []
        raws = await self.client.mget([self.key_prefix + t for t in task_ids])
        return [None if r is None else _decode(r) for r in raws]

    def _resolve(self, task_id: str, meta: dict[str, Any]) -> None:
        pending = self._pending.get(task_id)
        if pending is not None and not pending.future.done() and meta.get("status") in states.READY_STATES:
            pending.future.set_result(meta)

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self.key_prefix + "*")
                if self._progress_channels:
                    await pubsub.subscribe(*self._progress_channels)
                self._pubsub = pubsub
                await self._catch_up(0.0)  # anything stored while we were not listening
                self._ready.set()
                backoff = 0.1
                async for message in pubsub.listen():
                    self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: reconnect, then catch up
                log.warning("result channel %s lost (%s); reconnecting in %.1f s", self.url, exc, backoff)
                self._pubsub = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "pmessage":
            task_id = channel[len(self.key_prefix) :]
            if task_id in self._pending:
                try:
                    self._resolve(task_id, _decode(message["data"]))
                except ValueError:
                    log.warning("undecodable result on %s", channel)
        elif kind == "message":
            owner = self._progress_channels.get(channel)
            pending = self._pending.get(owner) if owner else None
            if pending is not None and pending.progress_queue is not None:
                try:
                    pending.progress_queue.put_nowait(json.loads(message["data"]))
                except ValueError:
                    log.warning("undecodable progress event on %s", channel)

    async def _catch_up(self, older_than_s: float) -> None:
        now = time.monotonic()
        ids = [t for t, p in self._pending.items() if not p.future.done() and now - p.since >= older_than_s]
        for task_id, meta in zip(ids, await self.fetch_many(ids), strict=True):
            if meta is not None:
                self._resolve(task_id, meta)

    async def _sweep_forever(self) -> None:
        # A safety net, not the path: pub/sub delivers unless the connection dropped in between.
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                await self._catch_up(self.sweep_s)
            except Exception as exc:
                log.debug("result sweep failed: %s", exc)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: bytes | str) -> dict[str, Any]:
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("result meta is not an object")
    return meta


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("unsubscribe failed: %s", task.exception())
