"""Progress of a running tool call, on Redis pub/sub: one channel per task.

A call submitted with `progress=True` has its MCP server's progress notifications published,
in order and each once, as JSON `{"progress": p, "total": t or null, "message": m or null}` on
channel `agentful:progress:<task_id>` of the catalog store's Redis (the result backend or the
broker, whichever is Redis; with no Redis, nothing is published). The worker publishes every
notification before it stores the call's result, so once the result is ready, every event has
been sent.

Pub/sub keeps nothing: subscribe before the call starts. From sync code:

    from celery import uuid
    from tasks import call_tool
    from tasks.progress import subscribe

    task_id = uuid()
    with subscribe(task_id) as events:                   # subscribed before the call is queued
        r = call_tool.apply_async(("everything", "trigger-long-running-operation",
                                   {"duration": 2, "steps": 4}), {"progress": True}, task_id=task_id)
        for event in events.until(r, timeout_s=30):      # ends when the result is ready
            print(event["progress"], event["total"], event["message"])
    r.get()

`follow(result)` does the same for a call already queued (it may miss the first events).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Protocol, TypedDict

import redis

from tasks.redisconn import connect

CHANNEL_PREFIX = "agentful:progress:"


class ProgressEvent(TypedDict):
    progress: float
    total: float | None
    message: str | None


def channel(task_id: str) -> str:
    """The pub/sub channel of a task's progress."""
    return f"{CHANNEL_PREFIX}{task_id}"


def encode(progress: float, total: float | None, message: str | None) -> str:
    return json.dumps({"progress": progress, "total": total, "message": message}, separators=(",", ":"))


def decode(data: bytes | str) -> ProgressEvent:
    raw = json.loads(data)
    return ProgressEvent(progress=raw["progress"], total=raw.get("total"), message=raw.get("message"))


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One client (a thread-safe connection pool) per Redis URL and process."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = connect(url, socket_connect_timeout=3, socket_timeout=5)
            _clients[url] = client
        return client


def publish(url: str, task_id: str, progress: float, total: float | None, message: str | None) -> int:
    """Publish one progress event; returns how many subscribers got it (0 is fine)."""
    return publish_event(url, task_id, encode(progress, total, message))


def publish_event(url: str, task_id: str, data: str) -> int:
    """Publish one event (progress, or a relayed question or log line: tasks/relay.py) on the
    task's channel; how many subscribers got it."""
    return int(redis_client(url).publish(channel(task_id), data))


class _Ready(Protocol):
    def ready(self) -> bool: ...


class Subscription:
    """A live subscription to one task's progress channel (a context manager)."""

    def __init__(self, url: str, task_id: str) -> None:
        self.task_id = task_id
        self._pubsub = redis_client(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel(task_id))

    def get(self, timeout_s: float) -> ProgressEvent | None:
        """The next event, or None when none came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message.get("type") == "message":
                return decode(message["data"])
            if time.monotonic() >= deadline:
                return None

    def until(
        self, result: _Ready, *, timeout_s: float | None = None, poll_s: float = 0.1
    ) -> Iterator[ProgressEvent]:
        """Every event until `result` is ready (then the ones already sent), or the timeout.

        The worker publishes all progress before it stores the result, so after `ready()` the
        remaining events are already on this connection; they are drained, then it stops.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            event = self.get(poll_s)
            if event is not None:
                yield event
            elif result.ready():
                while (event := self.get(poll_s)) is not None:
                    yield event
                return
        raise TimeoutError(f"no result for task {self.task_id} within {timeout_s} s")

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def store_url() -> str:
    from tasks.store import catalog_store

    store = catalog_store()
    if store is None:
        raise RuntimeError("progress needs Redis as the broker or the result backend; none is configured")
    return store.url


def subscribe(task_id: str, *, url: str | None = None) -> Subscription:
    """Subscribe to a task's progress now (before submitting it with that `task_id`)."""
    return Subscription(url or store_url(), task_id)


def follow(result: Any, *, timeout_s: float | None = None, url: str | None = None) -> Iterator[ProgressEvent]:
    """The progress events of a call already queued (an AsyncResult), until it is ready.

    Events published before this subscribes are missed: use `subscribe` before submitting
    when every event matters.
    """
    with subscribe(str(result.id), url=url) as sub:
        yield from sub.until(result, timeout_s=timeout_s)
