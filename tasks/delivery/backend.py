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

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from kombu.utils.encoding import bytes_to_str

from tasks.delivery import keys, scripts
from tasks.delivery.claims import Claim

BACKEND_CLASS = "tasks.delivery.backend:FencedRedisBackend"


def claim_state_after(state: str) -> str:
    """The claim's state once `state` is stored: a final state ends it, a retry frees it."""
    if state in states.READY_STATES:
        return "done"
    if state == states.RETRY:
        return "free"
    return ""


class FencedRedisBackend(RedisBackend):  # type: ignore[misc]
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
        script = self._store()
        pipe = self.client.pipeline(transaction=False)
        for task_id, result, state, request in entries:
            claim: Claim = request.agentful_claim
            encoded = self.encode_result(result, state)
            meta = self._get_result_meta(result=encoded, state=state, traceback=None, request=request)
            meta["task_id"] = bytes_to_str(task_id)
            expires = self.failure_expires if state == states.FAILURE else self.expires
            script(**_store_args(self.get_key_for_task(task_id), self.encode(meta), expires, claim,
                                 claim_state_after(state)), client=pipe)  # fmt: skip
        return [bool(r) for r in pipe.execute()]

    def _store(self) -> Any:
        script = self.__dict__.get("_store_script")
        if script is None:
            script = self.__dict__["_store_script"] = self.client.register_script(scripts.STORE)
        return script

    def _fenced_set(self, key: str, value: Any, expires: int | None, claim: Claim, after: str) -> bool:
        return bool(self._store()(**_store_args(key, value, expires, claim, after)))


def _store_args(
    key: str, value: Any, expires: float | None, claim: Claim, after: str
) -> dict[str, list[Any]]:
    ms = int(expires * 1000) if expires else 0
    return {
        "keys": [key, keys.claim(claim.task_id), keys.fenced(claim.incarnation)],
        "args": [value, ms, claim.token, after],
    }
