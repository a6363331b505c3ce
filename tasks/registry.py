"""The worker registry: who is alive, what they run, how loaded they are.

Each worker publishes a heartbeat every `heartbeat_s` (default 2 s): a JSON entry under
`agentful:worker:<node>` that expires after two missed beats (plus a second), and its node in the sorted set
`agentful:workers` scored by the time of its last beat (so a worker that stopped beating is
still known, as dead, to whoever must move its calls). Producers and `agentful status` read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis

from tasks.delivery import keys, scripts
from tasks.errors import BrokerUnavailableError
from tasks.policy.scaling import WindowStats
from tasks.redisconn import connect

WORKERS_KEY = "agentful:workers"
ENTRY_PREFIX = "agentful:worker:"
FORGET_AFTER_S = 3600.0  # a dead worker's node stays listed this long


def expiry_s(interval_s: float) -> float:
    """A heartbeat entry outlives two missed beats, not three: failover within 10 s at 2 s beats."""
    return 2 * interval_s + 1.0


def lease_s(interval_s: float) -> float:
    """How old a worker's heartbeat lease (tasks/delivery/identity.py) may be before it asks the
    store, right before each call, whether the call is still its own: a whole beat less than the
    entry's expiry (3 s at 2 s beats), so that nobody can have declared it dead yet. Younger
    leases are the common case and cost no round trip."""
    return expiry_s(interval_s) - interval_s


@dataclass(frozen=True)
class ServerHealth:
    state: str
    tools: int = 0
    restarts: int = 0
    in_flight: int = 0
    calls: int = 0
    errors: int = 0
    latency_ms: float | None = None
    breaker: str = "closed"
    healthy: bool = True  # by the health checks' thresholds (unhealthyThreshold/healthyThreshold)
    checks: int = 0  # health checks run so far


@dataclass(frozen=True)
class WorkerBeat:
    """One heartbeat of one worker."""

    node: str
    queue: str
    pid: int
    capacity: int
    in_flight: int
    reserved: int
    cpu_percent: float
    memory_percent: float
    beat_at_s: float
    servers: dict[str, ServerHealth] = field(default_factory=dict)
    # For the autoscaler (beat/autoscale.py): since when it has held nothing (None: busy), and
    # its calls over the last `autoscaling.windowS` (count, failures, latency histogram).
    idle_since_s: float | None = None
    calls_window: WindowStats | None = None
    # The incarnation (tasks/delivery/identity.py) that beat: the failover tells by it whether a
    # node whose incarnation died lives on as another.
    incarnation: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerBeat:
        raw: dict[str, Any] = json.loads(text)
        raw["servers"] = {k: ServerHealth(**v) for k, v in raw.get("servers", {}).items()}
        window = raw.get("calls_window")
        if isinstance(window, dict):
            raw["calls_window"] = WindowStats(**{**window, "buckets": tuple(window.get("buckets", ()))})
        known = {f.name for f in fields(cls)}  # a newer worker's extra fields are ignored
        return cls(**{k: v for k, v in raw.items() if k in known})


def worker_queue(node: str) -> str:
    """The queue only this worker consumes."""
    return f"worker.{node}"


class Fenced(Exception):  # noqa: N818 (a verdict, not a failure)
    """The incarnation that tried to beat was declared dead."""


class Registry:
    def __init__(self, url: str, *, timeout_s: float = 3.0, client_name: str | None = None) -> None:
        self.url = url
        self._client = connect(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, client_name=client_name
        )
        self._beat = self._client.register_script(scripts.BEAT)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def publish(self, beat: WorkerBeat, *, ttl_s: float, incarnation: str | None = None) -> float:
        """One heartbeat, on the server's clock; returns the server time. With `incarnation`,
        it is refreshed in the incarnation set too, and Fenced is raised once it was declared dead."""
        inc = incarnation or ""
        entry = keys.INCARNATION + inc
        now = self._beat_script(
            [
                keys.INCARNATIONS,
                keys.fenced(inc) if inc else keys.fenced("-"),
                ENTRY_PREFIX + beat.node,
                entry,
            ],
            [inc or "-", beat.to_json(), int(ttl_s * 1000), beat.node],
        )
        self._client.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER_S)
        return now

    def register(self, incarnation: str, description: dict[str, str]) -> float:
        """Record a new incarnation (before it takes anything); returns the server time."""
        pairs = [item for kv in description.items() for item in kv]
        return self._beat_script(
            [keys.INCARNATIONS, keys.fenced(incarnation), "", keys.INCARNATION + incarnation],
            [incarnation, "", 0, "", *pairs],
        )

    def _beat_script(self, script_keys: list[str], args: list[str | int]) -> float:
        ks = [*script_keys, WORKERS_KEY]
        try:
            reply = self._beat(keys=ks, args=args)
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot reach the worker registry: {exc}") from exc
        if reply == -1:
            raise Fenced(args[0])
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    def server_time(self) -> float:
        seconds, micros = self._client.time()
        return float(seconds) + micros / 1e6

    def incarnations(self) -> dict[str, float]:
        """Every incarnation not yet reaped, with the server time of its last beat."""
        listed: list[tuple[bytes, float]] = self._client.zrange(keys.INCARNATIONS, 0, -1, withscores=True)  # type: ignore[assignment]
        return {n.decode(): at for n, at in listed}

    def describe(self, incarnation: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self._client.hgetall(keys.INCARNATION + incarnation)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def forget(self, incarnation: str) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.zrem(keys.INCARNATIONS, incarnation)
        pipe.delete(keys.INCARNATION + incarnation)
        pipe.execute()

    def withdraw(self, node: str) -> None:
        """A worker stopping warmly: no new call is routed to it from now on.

        Its node stays listed (as not alive) so that, after the grace period, a live worker
        drains whatever reached its own queue late (producers' registry copies are up to
        `route_cache_s` old, and the calls it held are handed back there on shutdown).
        """
        self._client.delete(ENTRY_PREFIX + node)

    def _read(self) -> tuple[dict[str, float], dict[str, WorkerBeat]]:
        """Every listed node with its last beat time, and the entries that have not expired."""
        try:
            listed: list[tuple[bytes, float]] = self._client.zrange(WORKERS_KEY, 0, -1, withscores=True)  # type: ignore[assignment]
            beats = {n.decode(): at for n, at in listed}
            raw = self._client.mget([ENTRY_PREFIX + n for n in beats]) if beats else []
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read the worker registry: {exc}") from exc
        return beats, {n: WorkerBeat.from_json(v) for n, v in zip(beats, raw, strict=True) if v}

    def alive(self) -> dict[str, WorkerBeat]:
        """Every worker whose last heartbeat has not expired."""
        return self._read()[1]

    def dead(self, *, grace_s: float = 0.0, now_s: float | None = None) -> list[str]:
        """Workers still listed, not alive, whose last beat is at least `grace_s` old (by the
        server's clock: beats are scored with it)."""
        beats, alive = self._read()
        try:
            now = self.server_time() if now_s is None else now_s
        except redis.RedisError as exc:
            raise BrokerUnavailableError(f"cannot read the worker registry: {exc}") from exc
        return [n for n, at in beats.items() if n not in alive and now - at >= grace_s]
