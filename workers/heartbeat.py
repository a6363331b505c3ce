"""The worker's heartbeat: every `heartbeat_s` it tells the registry it is alive and how it is.

A daemon thread in the worker's main process (where Celery's own request state lives). Each
beat refreshes the node's registry entry and its incarnation (tasks/delivery/identity.py) on
the store's clock; a beat refused because the incarnation was declared dead (the worker was
paused or cut off past the expiry) makes it a new incarnation, whose calls are its own again.
Between beats it looks for dead incarnations (workers/failover.py) twice a second. On a warm
shutdown it withdraws the entry at once, so producers stop routing calls to it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import psutil

from tasks.batch import running_beyond_tasks
from tasks.delivery import identity
from tasks.errors import BrokerUnavailableError
from tasks.policy.scaling import WindowStats
from tasks.registry import Fenced, Registry, ServerHealth, WorkerBeat, expiry_s
from workers.failover import Reaper

log = logging.getLogger(__name__)
TICK_S = 0.25  # how often idleness is tracked
REAP_EVERY_S = 0.5  # how often dead incarnations are looked for


class Heartbeat:
    def __init__(
        self,
        registry: Registry,
        *,
        node: str,
        queue: str,
        capacity: int,
        interval_s: float,
        servers: Callable[[], dict[str, ServerHealth]],
        reaper: Reaper | None = None,
        window: Callable[[], WindowStats | None] | None = None,
    ) -> None:
        self.registry = registry
        self.node = node
        self.queue = queue
        self.capacity = capacity
        self.interval_s = interval_s
        self.servers = servers
        self.reaper = reaper
        self.window = window  # the calls of the last autoscaling.windowS (beat's autoscaler)
        self._idle_since: float | None = time.time()  # None while it holds a call
        self._done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentful-heartbeat", daemon=True)
        self._server_now: tuple[float, float] | None = None  # (server time, monotonic) of the last beat
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    def start(self) -> Heartbeat:
        try:
            self.beat()
        except BrokerUnavailableError as exc:
            log.warning("first heartbeat of %s failed (%s); retrying", self.node, exc)
        self._thread.start()
        return self

    def beat(self) -> WorkerBeat:
        from celery.worker import state

        incarnation = identity.current()
        beat = WorkerBeat(
            node=self.node,
            queue=self.queue,
            pid=os.getpid(),
            capacity=self.capacity,
            in_flight=len(state.active_requests) + running_beyond_tasks(),
            reserved=len(state.reserved_requests),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            beat_at_s=time.time(),
            servers=self.servers(),
            idle_since_s=self.track_idle(),
            calls_window=self.window() if self.window is not None else None,
            incarnation=incarnation or "",
        )
        ttl = expiry_s(self.interval_s)
        sent_at = time.monotonic()
        try:
            now = self.registry.publish(beat, ttl_s=ttl, incarnation=incarnation)
        except Fenced:
            assert incarnation is not None
            new = identity.rotate(incarnation)  # logs it
            identity.ensure_registered(new)
            beat = replace(beat, incarnation=new)
            now = self.registry.publish(beat, ttl_s=ttl, incarnation=new)
        self._server_now = (now, time.monotonic())
        identity.renew_lease(sent_at)
        return beat

    def server_now(self) -> float | None:
        """The store's clock, from the last beat (None before the first)."""
        if self._server_now is None:
            return None
        at, mono = self._server_now
        return at + (time.monotonic() - mono)

    def track_idle(self) -> float | None:
        """Since when this worker has held nothing (None: it holds calls now). Checked every
        TICK_S; a call that came and went between two checks shows in Celery's task count."""
        from celery.worker import state

        done = sum(state.total_count.values())
        if state.active_requests or state.reserved_requests:
            self._idle_since = None
        elif self._idle_since is None or done != self._done:
            self._idle_since = time.time()
        self._done = done
        return self._idle_since

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        next_reap = time.monotonic()
        while not self._stop.wait(TICK_S):
            try:
                self.track_idle()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval_s
                    self.beat()
                now = self.server_now()
                if self.reaper is not None and now is not None and time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + REAP_EVERY_S
                    self.reaper.check(now)
            except Exception as exc:  # a broker blip must not kill the heartbeat
                self._server_now = None
                if self.reaper is not None:
                    self.reaper.lost_contact()
                log.warning("heartbeat of %s: %s", self.node, exc)

    def stop(self) -> None:
        """Stop beating and withdraw: new calls stop coming here."""
        self._stop.set()
        # A beat in progress would publish the entry again after the withdraw: let it finish.
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.registry.withdraw(self.node)
        except Exception as exc:
            log.warning("could not withdraw %s from the registry: %s", self.node, exc)
