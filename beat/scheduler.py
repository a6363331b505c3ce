"""Beat's scheduler (celeryconfig's `beat_scheduler`): Celery's PersistentScheduler that acts only
while it holds the leader lease (beat/lock.py), and runs beat's own jobs in this process.

Beat's own jobs are the schedule entries whose task is in `beat.schedule.IN_BEAT_TASKS`: the
autoscaler (beat/autoscale.py) and signing key rotation (gateway/auth/rotation.py). They show in
the schedule with the others, but are run here instead of being sent:
- the local-process provider must start workers on the host the operator chose for the control
  loop, not on whichever worker took a control-queue task, and a worker must never stop itself;
- key rotation needs the gateway's code and the key store, which workers have no business with;
  a worker whose config lacks auth would reject the task.
The code of a job is imported on its first run, so beat imports gateway.auth only when auth is on.

Rotation is also checked at beat's start: its policy decides from the keys' ages, so a check
costs one read of the store, and a key that aged while no beat ran is replaced now, not a day on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.beat import PersistentScheduler
from kombu.exceptions import OperationalError

from beat.autoscale import build_autoscaler, lease_ttl_s, redis_client
from beat.lock import LeaderLease
from beat.schedule import AUTOSCALE_TASK, IN_BEAT_TASKS, ROTATE_KEYS_TASK

log = logging.getLogger(__name__)


class AgentfulScheduler(PersistentScheduler):  # type: ignore[misc]
    """Runs the schedule only while it holds the leader lease; runs IN_BEAT_TASKS entries here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lease: LeaderLease | None = None
        self._lease_tried = False
        self._leading: bool | None = None
        self._jobs: dict[str, Callable[[], object] | None] = {}
        super().__init__(*args, **kwargs)
        self.max_interval: float = min(float(self.max_interval), self._ttl() / 3)

    def _ttl(self) -> float:
        from tasks.settings import get_config

        return lease_ttl_s(get_config().autoscaling)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        for entry in self.schedule.values():
            if entry.task == ROTATE_KEYS_TASK:  # due now: checked at start, then every interval
                run_every = getattr(entry.schedule, "run_every", None)
                if isinstance(run_every, dt.timedelta):
                    entry.last_run_at = self.app.now() - run_every

    def _get_lease(self) -> LeaderLease | None:
        if not self._lease_tried:
            self._lease_tried = True
            from tasks.api import catalog_store

            store = catalog_store()
            if store is None:
                log.warning("no Redis broker or backend: no leader lease, this beat acts alone")
            else:
                self._lease = LeaderLease(redis_client(store.url), ttl_s=self._ttl())
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
        try:
            return float(super().tick(*args, **kwargs))
        except (redis.RedisError, OperationalError, OSError) as exc:
            # The broker restarting: beat lives through it, and tries again in a second.
            log.warning("beat: the broker is unreachable (%s); retrying", exc)
            return 1.0

    def _job(self, task: str) -> Callable[[], object] | None:
        """The callable of one of beat's own jobs, built on its first run (None: cannot run here)."""
        if task not in self._jobs:
            job: Callable[[], object] | None = None
            if task == AUTOSCALE_TASK:
                autoscaler = build_autoscaler(self.app, lease=self._get_lease())
                job = autoscaler.evaluate if autoscaler is not None else None
            elif task == ROTATE_KEYS_TASK:
                from gateway.auth.rotation import rotate_now

                job = rotate_now
            self._jobs[task] = job
        return self._jobs[task]

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if entry.task in IN_BEAT_TASKS:  # not "Sending due task": it runs here
            self.apply_async(entry, producer=producer, advance=False)
            return
        super().apply_entry(entry, producer=producer)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task not in IN_BEAT_TASKS:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            self.reserve(entry)
        try:
            job = self._job(entry.task)
            if job is not None:
                job()
        except Exception:  # one failed run must not stop beat; the next interval tries again
            log.exception("beat job %s (%s) failed", entry.name, entry.task)
        return None

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
        super().close()
