"""One beat acts at a time: a leader lease in Redis (redis-py's Lock, with a timeout).

Why a lease held across ticks and not a lock around each evaluation: two beats started by
mistake would then take turns, each acting on its own view; with a lease only the leader runs
the schedule (autoscaling, health checks, periodic calls) and the other waits. The leader renews
the lease every tick (well inside its timeout); a leader that dies without releasing it is
replaced once the lease times out. Why not RedBeat: it would move the whole schedule into Redis
and replace the persistent scheduler that the config file's schedules already use; the lock is
the one part needed here, and redis-py's Lock (atomic token check in Lua) is that part.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)
LEASE_KEY = "agentful:beat:leader"


class LeaderLease:
    def __init__(self, client: redis.Redis, *, name: str = LEASE_KEY, ttl_s: float = 15.0) -> None:
        self.client = client
        self.name = name
        self.ttl_s = ttl_s
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = client.lock(name, timeout=ttl_s, blocking=False, thread_local=False)

    def hold(self) -> bool:
        """True while this process leads: renew the lease if it holds it, else try to take it."""
        try:
            if self._lock.owned():
                try:
                    self._lock.reacquire()
                    return True
                except LockError:  # lost between the check and the renewal: try to take it again
                    pass
            return bool(self._lock.acquire(blocking=False, token=self.identity))
        except redis.RedisError as exc:
            log.warning("beat leader lease %s: %s", self.name, exc)
            return False

    def holder(self) -> str | None:
        """Who holds the lease (None: nobody, or the store cannot be read just now)."""
        try:
            value = self.client.get(self.name)
        except redis.RedisError:
            return None
        return value.decode() if isinstance(value, bytes) else None

    def release(self) -> None:
        try:
            if self._lock.owned():
                self._lock.release()
        except (LockError, redis.RedisError) as exc:
            log.warning("could not release the beat leader lease: %s", exc)
