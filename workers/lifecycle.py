"""A worker's life around its calls: start as an incarnation, survive reconnects, stop in bounds.

- At start (`celeryd_init`, before any connection): the worker becomes the first incarnation of
  its node (tasks/delivery/identity.py), and every Redis connection of its process carries the
  name `agentful:<node>:<pid>`, by which the failover tells a dead process from a paused one.
- After a broker reconnect, Celery drops the calls it had prefetched (they could not be acked on
  the old channel), but they are still in this incarnation's unacked hash: a consumer bootstep
  puts them back in their queues (all but the calls still running, which finish and ack).
- A warm stop (SIGTERM) withdraws the worker and moves its own queue at once, finishes the calls
  it runs for at most `AGENTFUL_STOP_TIMEOUT_S`, hands back the rest (Celery), and at exit the
  incarnation retires: fenced, whatever it still held restored, its own queue moved. Past the
  bound the stop turns hard: the same retirement, then the process exits; calls still running
  are restored for others to run (the one window of docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import redis
from celery import bootsteps
from celery.signals import celeryd_init, worker_shutdown, worker_shutting_down
from celery.worker import state

from tasks.app import app
from tasks.delivery import identity
from tasks.delivery.owner import patiently
from tasks.errors import BrokerUnavailableError
from tasks.redis_urls import is_redis_url
from tasks.redisconn import connect
from tasks.registry import Registry, expiry_s, worker_queue
from tasks.settings import get_settings
from workers.failover import Reaper, client_name, drain_queue, restore_unacked

log = logging.getLogger(__name__)
_reaper: Reaper | None = None
_broker: redis.Redis | None = None


def broker_client() -> redis.Redis | None:
    """This process's client of a Redis broker (None on RabbitMQ)."""
    global _broker
    url = str(app.conf.broker_url)
    if _broker is None and is_redis_url(url):
        node, pid = identity.node() or "", os.getpid()
        _broker = connect(
            url, socket_connect_timeout=3, socket_timeout=10, client_name=client_name(node, pid)
        )
    return _broker


def reaper(store_url: str) -> Reaper:
    global _reaper
    if _reaper is None:
        settings = get_settings()
        registry = Registry(store_url, client_name=client_name(identity.node() or "", os.getpid()))
        broker = broker_client()
        broker_url = str(app.conf.broker_url)
        on_redis = is_redis_url(broker_url)
        _reaper = Reaper(
            registry,
            broker,
            broker_is_store=on_redis and _same(broker_url, store_url),
            amqp_url=None if on_redis else broker_url,
            me=identity.current,
            interval_s=settings.heartbeat_s,
            expiry_s=expiry_s(settings.heartbeat_s),
        )
    return _reaper


def _same(a: str, b: str) -> bool:
    return a.split("?", 1)[0].rstrip("/") == b.split("?", 1)[0].rstrip("/")


@celeryd_init.connect
def _on_init(sender: str = "", conf: Any = None, **_: Any) -> None:
    """Before any connection: the first incarnation, and the process's connection name."""
    identity.begin(str(sender))
    if conf is not None and is_redis_url(str(conf.broker_url)):
        options = dict(conf.broker_transport_options or {})
        options["client_name"] = client_name(str(sender), os.getpid())
        conf.broker_transport_options = options

    from tasks.api import catalog_store

    store = catalog_store()
    if store is not None:

        def register(incarnation: str) -> None:
            reaper(store.url).registry.register(incarnation, identity.describe())

        identity.registrar = register


class RestoreAfterReconnect(bootsteps.StartStopStep):  # type: ignore[misc]
    """On each reconnect of the consumer, hand back the prefetched calls Celery dropped."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        broker = broker_client()
        incarnation = identity.current()
        if c.restart_count <= 0 or broker is None or incarnation is None:
            return

        def hand_back() -> int:
            active = [r.message for r in list(state.active_requests)]
            running = {str(m.delivery_tag) for m in active if m is not None}
            return restore_unacked(broker, incarnation, exclude=running)

        # Retried here, before the consumer takes anything new: nothing else would hand them
        # back while this incarnation lives (a broker just back may still be loading its data).
        try:
            restored = patiently(hand_back, "hand back the prefetched calls after the reconnect")
        except BrokerUnavailableError as exc:
            log.error("%s; they stay in %s's unacked hash until it stops", exc, incarnation)
            return
        if restored:
            log.warning(
                "after the broker reconnect: %d prefetched calls handed back to their queues", restored
            )


app.steps["consumer"].add(RestoreAfterReconnect)


def move_own_queue(node: str) -> int:
    """Move what waits in this worker's own queue to the servers' shared queues."""
    broker = broker_client()
    if broker is None or not node:
        return 0
    try:
        return drain_queue(broker, worker_queue(node))
    except redis.RedisError as exc:
        log.warning("could not move the calls of %s: %s", worker_queue(node), exc)
        return 0


def retire(store_url: str | None) -> None:
    """This incarnation leaves: fenced, what it still holds restored, its own queue moved."""
    incarnation = identity.current()
    if store_url is None or incarnation is None:
        return
    try:
        restored, moved = reaper(store_url).reap(incarnation, leaving=True)
    except redis.RedisError as exc:
        log.error("could not hand back what %s holds: %s (the cluster's failover will)", incarnation, exc)
        return
    if restored or moved:
        log.warning("stopping: %d held calls restored, %d queued calls moved", restored, moved)


def _store_url() -> str | None:
    from tasks.api import catalog_store

    store = catalog_store()
    return store.url if store is not None else None


@worker_shutting_down.connect
def _on_stopping(sender: str = "", how: str = "", **_: Any) -> None:
    """Move the own queue now, and bound the stop."""
    move_own_queue(identity.node() or str(sender))
    if how == "Warm":
        bound = get_settings().stop_timeout_s
        threading.Thread(
            target=_hard_stop_after, args=(bound,), name="agentful-stop-bound", daemon=True
        ).start()


def _hard_stop_after(bound_s: float) -> None:
    stop = threading.Event()
    if stop.wait(bound_s):
        return
    running = len(state.active_requests)
    log.error(
        "warm stop did not end within %.0f s (AGENTFUL_STOP_TIMEOUT_S): stopping hard; %d running calls "
        "are handed to other workers",
        bound_s,
        running,
    )
    retire(_store_url())
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(1)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    retire(_store_url())
