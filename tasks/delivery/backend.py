"""Celery's Redis result backend, where a call's result is stored only under its claim.

A task that runs a call under a claim (tasks/delivery/claims.py) carries it on its request
(`request.agentful_claim`). Its result, a retry or a failure is then written by one script
(tasks/delivery/scripts.py STORE) that checks, in the same step, that the claim still has the
task's token and its owner incarnation is not fenced, and that no SUCCESS is stored already.
So a worker that resumes after it was declared dead, or a copy of a call that waited for its
owner, stores nothing. Everything else (list_tools, states without a claim) is stored exactly
as Celery's RedisBackend stores it. Selected by the URL `tasks.delivery.backend:FencedRedisBackend+redis://...`,
Celery's way to name a backend class (celeryconfig.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str

from tasks.delivery import keys, scripts
from tasks.delivery.claims import Claim
from tasks.delivery.pipelined import evalsha_many
from tasks.redis_urls import KEEPALIVE_OPTIONS

log = logging.getLogger(__name__)
BACKEND_CLASS = "tasks.delivery.backend:FencedRedisBackend"
SENTINEL_BACKEND_CLASS = "tasks.delivery.backend:FencedSentinelBackend"


def claim_state_after(state: str) -> str:
    """The claim's state once `state` is stored: a final state ends it, a retry frees it."""
    if state in states.READY_STATES:
        return "done"
    if state == states.RETRY:
        return "free"
    return ""


class FencedRedisBackend(RedisBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "path" not in self.connparams:  # TCP: a vanished host fails in seconds (redis_urls.py)
            self.connparams.update(socket_keepalive=True, socket_keepalive_options=KEEPALIVE_OPTIONS)
        options = self._transport_options or {}
        # Over Sentinel a claimed result is stored only once a replica has it too (celeryconfig.py
        # `result_backend_transport_options`): the task's message is acknowledged after the store,
        # so a result lost with the primary would leave a call done but not answered.
        self._wait_replicas = int(options.get("wait_replicas") or 0)
        self._wait_replicas_ms = int(options.get("wait_replicas_ms") or 2000)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if getattr(request, "agentful_stored", False):
            return result  # the task stored it already, under its claim (`store_claimed`)
        claim: Claim | None = getattr(request, "agentful_claim", None)
        if claim is None:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        if not claim.owner:
            return result  # a copy that waited for the owner's result: it writes nothing
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(
            self._fenced_set,
            (self.get_key_for_task(task_id), self.encode(meta), expires, claim, claim_state_after(state)),
        )
        return result

    def store_claimed(self, task_id: str, result: Any, state: str, request: Any) -> bool:
        """Store a result under the request's claim now, from inside the task, and say whether
        it was stored: a worker declared dead after its last check finds out here, and gives
        the message back instead of acknowledging a call whose result nobody stored. Celery's
        own store after the task returns then writes nothing (`agentful_stored`)."""
        stored = self.store_many([(task_id, result, state, request)])[0]
        request.agentful_stored = True
        return stored

    def store_many(self, entries: list[tuple[str, Any, str, Any]]) -> list[bool]:
        """Each (task id, result, state, request with its claim) stored as `store_result` would
        store it under its claim, in one round trip: the results of a batch (tasks/batch.py).
        True where stored; False where the claim was no longer the request's."""
        calls = []
        for task_id, result, state, request in entries:
            claim: Claim = request.agentful_claim
            encoded = self.encode_result(result, state)
            meta = self._get_result_meta(result=encoded, state=state, traceback=None, request=request)
            meta["task_id"] = bytes_to_str(task_id)
            expires = self.failure_expires if state == states.FAILURE else self.expires
            calls.append(_store_args(self.get_key_for_task(task_id), self.encode(meta), expires, claim,
                                     claim_state_after(state)))  # fmt: skip
        return [bool(r) for r in self._execute(calls)]

    def _execute(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        """The store script once per (keys, args) in one round trip, waiting for
        `wait_replicas` replicas after them if asked."""
        if not self._wait_replicas:
            return evalsha_many(self.client, self._store(), calls)
        wait = (self._wait_replicas, self._wait_replicas_ms)
        replies = evalsha_many(self.client, self._store(), calls, wait=wait)
        if replies[-1] < self._wait_replicas:
            # Stored on the primary, so the call is answered; only a failover in this very window
            # could lose it, and then the call's message (acknowledged after this) may run again.
            # Failing the call instead would lose a result that is there: warn, and go on.
            log.warning(
                "a result reached the broker's primary, but %s of the %s replica(s) confirmed it "
                "within %s ms (AGENTFUL_WAIT_REPLICAS)", replies[-1], self._wait_replicas,
                self._wait_replicas_ms,
            )  # fmt: skip
        return replies[:-1]

    def _store(self) -> Any:
        script = self.__dict__.get("_store_script")
        if script is None:
            script = self.__dict__["_store_script"] = self.client.register_script(scripts.STORE)
        return script

    def _fenced_set(self, key: str, value: Any, expires: int | None, claim: Claim, after: str) -> bool:
        return bool(self._execute([_store_args(key, value, expires, claim, after)])[0])


class FencedSentinelBackend(FencedRedisBackend, SentinelBackend):  # type: ignore[misc]
    """The same over Sentinel: Celery's SentinelBackend finds the primary (and finds it again
    after a failover); the store scripts and fencing are FencedRedisBackend's."""


def _store_args(
    key: str, value: Any, expires: float | None, claim: Claim, after: str
) -> tuple[list[Any], list[Any]]:
    ms = int(expires * 1000) if expires else 0
    return [key, keys.claim(claim.task_id), keys.fenced(claim.incarnation)], [value, ms, claim.token, after]
