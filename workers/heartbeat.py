"""The worker's heartbeat: every `heartbeat_s` it tells the registry it is alive and how it is.

A daemon thread in the worker's main process (where Celery's own request state lives). On a
warm shutdown it withdraws the entry at once, so producers stop routing calls to it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import psutil

from tasks.registry import Registry, ServerHealth, WorkerBeat

log = logging.getLogger(__name__)


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
    ) -> None:
        self.registry = registry
        self.node = node
        self.queue = queue
        self.capacity = capacity
        self.interval_s = interval_s
        self.servers = servers
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
        )
        self.registry.publish(beat, ttl_s=3 * self.interval_s)
        return beat

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # a broker blip must not kill the heartbeat
                log.warning("heartbeat of %s not published: %s", self.node, exc)

    def stop(self) -> None:
        """Stop beating and withdraw: new calls stop coming here."""
        self._stop.set()
        try:
            self.registry.withdraw(self.node)
        except Exception as exc:
            log.warning("could not withdraw %s from the registry: %s", self.node, exc)
