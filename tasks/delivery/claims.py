"""A claim per call: at most one worker runs a call at a time, and only its owner stores a result.

The claim of a call (keyed by its task id: a call with an idempotency key has a task id made
from it) holds its owner incarnation, a fencing token (a counter every new claim increments),
its state (running, or free for a retry) and the attempt number; it is deleted when the final
result is stored, which from then on says the call is done (so claims cost memory only while
calls are in flight). It is kept alive by the owner's
heartbeat, not by a TTL of its own: it changes hands only once its owner is declared dead
(fenced, workers/failover.py) or is no incarnation the registry knows. A copy of the call that
finds a live owner waits for its result; the result backend stores a result only with the
current token of an unfenced owner (tasks/delivery/backend.py). Scripts: tasks/delivery/scripts.py.

The one execution that can happen twice: a call that was inside the MCP server when its owner
was declared dead. The server gets `agentful/idempotency_key` and `agentful/attempt` in `_meta`
so that an idempotent tool can make that one exactly once too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis

from tasks.delivery import keys, scripts
from tasks.delivery.pipelined import evalsha_many

Verdict = Literal["own", "wait", "done", "fenced"]


class LostClaim(Exception):  # noqa: N818 (a state, not a failure of the call)
    """This worker no longer owns the call (it was declared dead meanwhile): nothing was sent."""


@dataclass(frozen=True)
class Claim:
    """What a task holds while it runs a call: the token its result is stored under."""

    task_id: str
    incarnation: str
    token: str | None  # None: not the owner (a copy that waited): it stores nothing
    attempt: int

    @property
    def owner(self) -> bool:
        return self.token is not None


def not_owner(task_id: str, incarnation: str) -> Claim:
    return Claim(task_id, incarnation, None, 0)


class ClaimStore:
    """Claims and fences on the Redis that holds the results (the store)."""

    def __init__(
        self, client: redis.Redis, *, ttl_s: float, result_prefix: str = "celery-task-meta-"
    ) -> None:
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self.result_prefix = result_prefix
        self._claim = client.register_script(scripts.CLAIM)
        self._release = client.register_script(scripts.RELEASE)
        self._owns = client.register_script(scripts.OWNS)

    def take(
        self, task_id: str, incarnation: str, nonce: str = ""
    ) -> tuple[Verdict, Claim | None, str | None]:
        """(verdict, the claim if owned, the owner if another holds it). `nonce`: the same for
        every try of one take (tries after a lost reply find the claim their own)."""
        keys_, args = self._take_args(task_id, incarnation, nonce)
        reply: Any = self._claim(keys=keys_, args=args)
        return _verdict(task_id, incarnation, reply)

    def take_many(
        self, task_ids: list[str], incarnation: str, nonce: str
    ) -> list[tuple[Verdict, Claim | None, str | None]]:
        """`take` of each call of a batch, in one round trip (a pipeline of the same script)."""
        calls = [self._take_args(task_id, incarnation, nonce) for task_id in task_ids]
        replies = evalsha_many(self.client, self._claim, calls)
        return [_verdict(t, incarnation, r) for t, r in zip(task_ids, replies, strict=True)]

    def _take_args(self, task_id: str, incarnation: str, nonce: str) -> tuple[list[Any], list[Any]]:
        return (
            [
                keys.claim(task_id),
                keys.fenced(incarnation),
                keys.FENCE_COUNTER,
                keys.INCARNATIONS,
                self.result_prefix + task_id,
            ],
            [incarnation, task_id, self.ttl_ms, keys.FENCED, nonce or uuid.uuid4().hex],
        )

    def owns(self, claim: Claim) -> bool:
        """Whether `claim` is still the call's claim and its incarnation not fenced."""
        if claim.token is None:
            return False
        reply = self._owns(
            keys=[keys.claim(claim.task_id), keys.fenced(claim.incarnation)], args=[claim.token]
        )
        return bool(reply)

    def release(self, task_id: str, incarnation: str) -> bool:
        """Free the claim `incarnation` holds on a call whose execution was lost without a
        result (a pool process died under it): the requeued copy may then take it."""
        return bool(self._release(keys=[keys.claim(task_id)], args=[incarnation]))

    def state(self, task_id: str) -> dict[str, str]:
        raw: Any = self.client.hgetall(keys.claim(task_id))
        return {_text(k): _text(v) for k, v in raw.items()}


def fence(client: redis.Redis, incarnation: str) -> None:
    """Declare an incarnation dead: from now on it takes, acknowledges and stores nothing."""
    client.set(keys.fenced(incarnation), "1", ex=keys.FENCED_TTL_S)


def is_fenced(client: redis.Redis, incarnation: str) -> bool:
    return bool(client.exists(keys.fenced(incarnation)))


def _verdict(task_id: str, incarnation: str, reply: Any) -> tuple[Verdict, Claim | None, str | None]:
    verdict = _text(reply[0])
    if verdict == "own":
        return "own", Claim(task_id, incarnation, _text(reply[1]), int(_text(reply[2]))), None
    if verdict in ("wait", "done"):
        return verdict, None, _text(reply[1])  # type: ignore[return-value]
    return "fenced", None, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
