"""The worker's heartbeat: every `heartbeat_s` it tells the registry it is alive and how it is.

A daemon thread in the worker's main process (where Celery's own request state lives). On a
warm shutdown it withdraws the entry at once, so producers stop routing calls to it. It also
publishes the delivery tags of the calls it holds, and reaps workers whose heartbeat expired
(workers/failover.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import psutil

from tasks.policy.scaling import WindowStats
from tasks.registry import Registry, ServerHealth, WorkerBeat, expiry_s
from workers.failover import Reaper

log = logging.getLogger(__name__)
HELD_TICK_S = 0.2  # how often the held delivery tags are compared and, if changed, published


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
        self._held: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentful-heartbeat", daemon=True)
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> WorkerBeat:
        from celery.worker import state

        beat = WorkerBeat(
            node=self.node,
            queue=self.queue,
            pid=os.getpid(),
            capacity=self.capacity,
            in_flight=len(state.active_requests),
            reserved=len(state.reserved_requests),
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            beat_at_s=time.time(),
            servers=self.servers(),
            idle_since_s=self.track_idle(),
            calls_window=self.window() if self.window is not None else None,
        )
        self.registry.publish(beat, ttl_s=expiry_s(self.interval_s))
        return beat

    def track_idle(self) -> float | None:
        """Since when this worker has held nothing (None: it holds calls now). Checked every
        HELD_TICK_S; a call that came and went between two checks shows in Celery's task count."""
        from celery.worker import state

        done = sum(state.total_count.values())
        if state.active_requests or state.reserved_requests:
            self._idle_since = None
        elif self._idle_since is None or done != self._done:
            self._idle_since = time.time()
        self._done = done
        return self._idle_since

    def held_tags(self) -> list[str]:
        """Delivery tags of every call this worker holds (reserved or running)."""
        from celery.worker import state

        for _ in range(3):  # the consumer thread mutates the set; copy it, retrying a torn read
            try:
                requests = list(state.reserved_requests)
                break
            except RuntimeError:
                continue
        else:
            return self._held
        return sorted(str(r.message.delivery_tag) for r in requests if r.message is not None)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        while not self._stop.wait(HELD_TICK_S):
            try:
                self.track_idle()
                if self.reaper is not None:
                    tags = self.held_tags()
                    if tags != self._held:
                        self.reaper.publish_held(self.node, tags)
                        self._held = tags
                if time.monotonic() >= next_beat:
                    next_beat += self.interval_s
                    self.beat()
                    if self.reaper is not None:
                        for dead in self.registry.dead(grace_s=expiry_s(self.interval_s)):
                            self.reaper.reap(dead)
            except Exception as exc:  # a broker blip must not kill the heartbeat
                log.warning("heartbeat of %s: %s", self.node, exc)

    def stop(self) -> None:
        """Stop beating and withdraw: new calls stop coming here."""
        self._stop.set()
        # A beat in progress would publish the entry again after the withdraw: let it finish.
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.registry.withdraw(self.node)
            if self.reaper is not None:
                self.reaper.publish_held(self.node, [])  # what it holds is handed back, not lost
        except Exception as exc:
            log.warning("could not withdraw %s from the registry: %s", self.node, exc)
