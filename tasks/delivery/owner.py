"""How a task becomes the owner of its call, or waits for the owner's result (tasks/delivery/claims.py).

Called by `call_tool` on the worker before anything reaches the MCP server. A copy of a call
(redelivered after a reconnect, restored from a worker wrongly thought dead, submitted twice
with one idempotency key) finds the claim held: it waits, polling, for the owner's result, and
takes the call over if the owner is declared dead meanwhile. A copy that has waited
`WAIT_BOUND_S` goes back to the queue for later instead of holding a slot for a long call.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery.exceptions import Ignore, Reject

from tasks.delivery import identity
from tasks.delivery.claims import Claim, ClaimStore, not_owner
from tasks.errors import BrokerUnavailableError
from tasks.redisconn import connect

log = logging.getLogger(__name__)
WAIT_POLL_S = 0.2
WAIT_BOUND_S = 30.0
REQUEUE_AFTER_S = 5.0
STORE_WAIT_S = 60.0  # how long a claim waits for the store (a broker restarting) before it gives up
_stores: dict[str, ClaimStore] = {}
T = TypeVar("T")


def patiently(fn: Callable[[], T], what: str, *, wait_s: float = STORE_WAIT_S) -> T:
    """`fn()`, retried while the store is unreachable (a broker restart takes seconds), at most
    `wait_s`; then BrokerUnavailableError (transient: Celery retries the call)."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            return fn()
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailableError(f"cannot {what}: the store is unreachable ({exc})") from exc
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def claim_store(url: str, ttl_s: float) -> ClaimStore:
    store = _stores.get(url)
    if store is None:
        client = connect(url, socket_connect_timeout=3, socket_timeout=10)
        store = _stores[url] = ClaimStore(client, ttl_s=ttl_s)
    return store


def given_back(task_id: str, incarnation: str) -> Reject:
    """What an incarnation declared dead does with a message it still holds: it gives it back
    (Celery's Reject, requeued), runs and stores nothing. On Redis its failover has restored the
    message already and the transport ignores a fenced incarnation's reject; RabbitMQ hands a
    message to another consumer only when the holder's connection closes, or when it is rejected
    like this: a pause shorter than the AMQP heartbeat's timeout keeps that connection, and an ack
    would lose the call."""
    return Reject(
        f"this worker incarnation ({incarnation}) was declared dead; call {task_id} goes back to the queue",
        requeue=True,
    )


def still_owned(store: ClaimStore, claim: Claim, lease_s: float) -> bool:
    """After the call ran: whether its claim is still this worker's (else its message goes back:
    `given_back`). The store is asked only when it may not be: this process has a new
    incarnation (the old one was declared dead meanwhile) or its heartbeat lease is stale."""
    if claim.incarnation == identity.current() and identity.lease_age_s() < lease_s:
        return True
    return owner_check(store, claim)()


def owner_check(store: ClaimStore, claim: Claim) -> Callable[[], bool]:
    """Asks the store whether `claim` is still the call's (patiently: a broker restart)."""
    return lambda: patiently(lambda: store.owns(claim), "check the call's claim")


def own_call(task: Any, store: ClaimStore | None) -> Claim | None:
    """The claim this task runs its call under (set on `task.request` for the result backend),
    or None where there are no claims (no Redis store, or not in a worker). Raises Celery's
    Ignore when the call is not this task's to run: its result is stored or will be by its owner."""
    incarnation = identity.current()
    task_id = task.request.id
    if store is None or incarnation is None or not task_id:
        return None
    deadline = time.monotonic() + WAIT_BOUND_S
    waited = False
    nonce = uuid.uuid4().hex  # a try whose reply a broker restart lost finds the claim its own
    while True:
        verdict, claim, owner = patiently(lambda: store.take(task_id, incarnation, nonce), "claim the call")
        if verdict == "own":
            assert claim is not None
            if waited:
                log.warning(
                    "call %s: its owner %s was declared dead; running it (attempt %d)",
                    task_id,
                    owner,
                    claim.attempt,
                )
            task.request.agentful_claim = claim
            return claim
        task.request.agentful_claim = not_owner(task_id, incarnation)
        if verdict == "done":
            raise Ignore(f"call {task_id} already has its result (from {owner}); this copy does nothing")
        if verdict == "fenced":
            raise given_back(task_id, incarnation)
        if not waited:
            log.info("call %s is running on %s; this copy waits for its result", task_id, owner)
            waited = True
        if time.monotonic() > deadline:
            task.signature_from_request(task.request, countdown=REQUEUE_AFTER_S).apply_async()
            raise Ignore(
                f"call {task_id} still runs on {owner}; this copy looks again in {REQUEUE_AFTER_S:.0f} s"
            )
        time.sleep(WAIT_POLL_S)
