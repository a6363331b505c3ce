"""Batched calls: many tool calls in one message, run at once on a worker's live session.

    from tasks import call_tools
    batch = call_tools([
        {"server": "everything", "tool": "echo", "arguments": {"message": "a"}},
        {"server": "everything", "tool": "echo", "arguments": {"message": "b"}, "idempotency_key": "b-1"},
    ])
    batch.get(timeout=30)        # [ToolResult, ToolResult], in the order of the calls
    batch.results[1].id          # every call keeps its own task id, result, error and retry

Every call is checked as `call_tool.delay` checks it, all of them before anything is queued: a
bad call raises, naming its index, and nothing is queued. Each call is routed as a single call
would be; the calls of one server that land on one queue travel as one `agentful.call_batch`
message of at most `MAX_BATCH` calls. On the worker each call keeps what makes a single call
safe: its own claim (the batch takes them in one round trip), its own result stored under that
claim (in one round trip), its idempotency key, and its own retry: a call that fails transiently
goes back to the queue alone, as a `call_tool` with the same task id. A batch whose worker dies
is redelivered like a call; the calls that finished are not run again, and a call another worker
still runs is handed on as a `call_tool` copy, which waits for that owner's result.

Why a task of our own and not Celery's `group`: a group is one message per call, which is what
costs the time (docs/performance.md); a chunks/starmap task runs its calls one after another.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Task, states
from celery.app.task import Context
from celery.result import AsyncResult
from celery.signals import task_revoked

from tasks.api import (
    CheckedTask,
    _stored_state,
    call_tool,
    checked_arguments,
    claims_store,
    idempotent_task_id,
    not_retried,
    require_broker,
    tool_result,
)
from tasks.app import app
from tasks.batch_result import BatchResult, channel
from tasks.checks import bind_call, check_options, check_project
from tasks.contracts import BatchCall, get_executor
from tasks.delivery import identity
from tasks.delivery.claims import Claim, LostClaim
from tasks.delivery.owner import given_back, owner_check, patiently
from tasks.errors import (
    AgentfulError,
    BrokerUnavailableError,
    CircuitOpenError,
    InvalidOptionError,
    ServerCrashedError,
    ToolTimeoutError,
    TransientError,
)
from tasks.policy.backoff import RetryPolicy
from tasks.routing import route_task, server_queue
from tasks.settings import get_config, get_settings
from tasks.taskrepr import call_repr, kwargs_repr
from tasks.telemetry.context import META_KEY as TRACE_META_KEY
from tasks.telemetry.context import trace_scope
from tasks.validation import check_arguments_shape, check_publish_options, check_timeout

log = logging.getLogger(__name__)
MAX_BATCH = 100  # calls in one message: bounds its size and what one worker's death delays
_CALL_KEYS = frozenset(
    ("server", "tool", "arguments", "project_id", "timeout_s", "idempotency_key", "retry_interrupted")
)
_jitter = random.Random()
_running_lock = threading.Lock()
_running_extra = 0


def running_beyond_tasks() -> int:
    """How many more calls this process runs than it runs tasks: a batch is one task and many
    calls (the heartbeat reports them as load; threads and solo pools, where it runs them)."""
    return _running_extra


@dataclass(frozen=True)
class PreparedCall:
    """A call checked and routed (`prepare_call`), ready to travel in a batch (`send_calls`)."""

    id: str
    server: str
    queue: str
    project: str | None  # the session's project, when the server runs one per project
    item: dict[str, Any]  # what the message carries: id, tool, arguments, kwargs[, trace_id]


class CallsNotQueuedError(BrokerUnavailableError):
    """Not all of the calls could be queued: `queued` holds the task ids that were (those will
    run), `ids` the task id of every call in order (from `call_tools`)."""

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(message, *args)
        self.queued: frozenset[str] = frozenset()
        self.ids: list[str] = []


def call_tools(
    calls: Iterable[Mapping[str, Any]],
    *,
    project_id: str | None = None,
    timeout_s: float | None = None,
    retry_interrupted: bool | None = None,
    expires: float | None = None,
) -> BatchResult:
    """Queue many calls at once; a ResultSet of their AsyncResults, in order (a BatchResult: its
    `.get()` waits on one subscription per batch message, tasks/batch_result.py).

    Each call is a mapping with `server`, `tool`, `arguments` and, optionally, the keywords of
    `call_tool` (`project_id`, `timeout_s`, `idempotency_key`, `retry_interrupted`); the keywords
    given here are defaults for every call. `progress` is not relayed for batched calls: use
    `call_tool(progress=True)` for those. A call whose idempotency key already has a stored
    result is not queued again: its result is the stored one.
    """
    given = {"project_id": project_id, "timeout_s": timeout_s, "retry_interrupted": retry_interrupted}
    defaults = {k: v for k, v in given.items() if v is not None}
    prepared = [prepare_call(call, defaults=defaults, index=i) for i, call in enumerate(calls)]
    results, unsent = [], []
    for call in prepared:
        result = call_tool.AsyncResult(call.id)
        results.append(result)
        if not (call.item["kwargs"].get("idempotency_key") and _stored_state(result) == "SUCCESS"):
            unsent.append(call)
    try:
        batches = send_calls(unsent, expires=expires)
    except CallsNotQueuedError as exc:
        exc.ids = [call.id for call in prepared]  # which call is which: queued ones will run
        raise
    return BatchResult(results, batches)


def prepare_call(
    call: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    index: int | None = None,
    task_id: str | None = None,
    trace_id: str | None = None,
) -> PreparedCall:
    """One call checked as `call_tool.delay` checks it, and routed. `index`: its place in a
    batch, named by its errors; `task_id`: its id (default: from its idempotency key, or new);
    `trace_id`: the trace it carries to the worker (default: its batch's)."""
    require_broker()
    config = get_config()
    try:
        if not isinstance(call, Mapping):
            raise TypeError(f"a call is a mapping with server, tool and arguments, not {type(call).__name__}")
        if "progress" in call or "relay" in call:
            raise InvalidOptionError(
                "batched calls relay no progress, questions or logs: use call_tool(progress=True, relay=...)"
            )
        unknown = sorted(set(call) - _CALL_KEYS, key=str)
        if unknown:
            raise TypeError(f"unknown key {unknown[0]!r}; a call takes: {', '.join(sorted(_CALL_KEYS))}")
        bound = bind_call((), {**(defaults or {}), **call})
        check_options(bound, {})
        check_project(bound, config)
        server, tool = bound.pop("server"), bound.pop("tool")
        arguments = checked_arguments(server, tool, bound.pop("arguments"), config)
        key = bound.get("idempotency_key")
        if key and task_id:
            raise InvalidOptionError("a call has an idempotency_key or a task id of its own, not both")
    except (AgentfulError, TypeError, ValueError) as exc:
        raise (exc if index is None else _at(index, exc)) from exc
    call_id = task_id or (idempotent_task_id(str(key)) if key else str(uuid.uuid4()))
    queue = route_task("agentful.call_tool", (server, tool, arguments), bound, {})["queue"]
    spec = config.servers.get(server)
    project = bound.get("project_id") if spec is not None and spec.per_project else None
    item = {"id": call_id, "tool": tool, "arguments": arguments, "kwargs": bound}
    if trace_id:
        item["trace_id"] = trace_id
    return PreparedCall(call_id, server, queue, project, item)


def send_calls(prepared: list[PreparedCall], *, expires: float | None = None) -> dict[str, list[str]]:
    """Queue prepared calls: those of one server on one queue in one message (MAX_BATCH calls
    at most); the id of each batch message sent, with its calls' ids (a call sent alone is in
    none). The first message the broker refuses raises CallsNotQueuedError, naming what was sent."""
    options: dict[str, Any] = {} if expires is None else {"expires": expires}
    check_publish_options(options, now=datetime.now(UTC))
    if options.get("expires") is None and get_settings().call_expires_s > 0:
        options["expires"] = get_settings().call_expires_s
    groups: dict[tuple[str, str, str | None], dict[str, dict[str, Any]]] = {}
    for call in prepared:  # one id once: the same idempotency key twice is one call
        groups.setdefault((call.queue, call.server, call.project), {})[call.id] = call.item
    queued: set[str] = set()
    batches: dict[str, list[str]] = {}
    for (queue, server, project), items in groups.items():
        batch = list(items.values())
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            try:
                batch_id = _publish(server, chunk, project, queue, options)
            except BrokerUnavailableError as exc:
                error = CallsNotQueuedError(
                    f"{exc}; {len(queued)} of the {len(prepared)} calls were queued before it"
                )
                error.queued = frozenset(queued)
                raise error from exc
            queued.update(i["id"] for i in chunk)
            if batch_id is not None:
                batches[batch_id] = [i["id"] for i in chunk]
    return batches


def _at(index: int, exc: Exception) -> Exception:
    """The same error, saying which call of the batch it is about."""
    message = f"calls[{index}]: {exc}"
    try:
        return type(exc)(message)
    except Exception:  # an exception class that takes other arguments
        return InvalidOptionError(message)


def _publish(
    server: str, items: list[dict[str, Any]], project: str | None, queue: str, options: dict[str, Any]
) -> str | None:
    """One batch message (its id), or a call alone (None)."""
    if len(items) == 1:  # a batch of one is a plain call (and shows as one in Flower)
        _publish_one(server, items[0], queue=queue, **options)
        return None
    tools = sorted({str(i["tool"]) for i in items})
    batch_id = str(uuid.uuid4())
    call_batch._publish(
        (server, items),
        {"project_id": project} if project else {},
        batch_id,
        queue=queue,
        argsrepr=f"{server}: {len(items)} calls ({', '.join(tools[:5])}{', ...' if len(tools) > 5 else ''})",
        kwargsrepr=repr({"project_id": project}) if project else "{}",
        **options,
    )
    return batch_id


class BatchTask(CheckedTask):
    def apply_async(self, *args: Any, **kwargs: Any) -> AsyncResult:
        raise TypeError("agentful.call_batch is queued by tasks.call_tools([...]), which checks each call")


@app.task(base=BatchTask, bind=True, name="agentful.call_batch", ignore_result=True)
def call_batch(
    self: Task, server: str, calls: list[dict[str, Any]], project_id: str | None = None
) -> dict[str, int]:
    """Run a batch's calls at once on this worker's session of `server` (see the module)."""
    executor = get_executor()
    max_bytes = get_config().mcp.server.max_request_bytes
    items: list[dict[str, Any]] = []
    calls = calls if isinstance(calls, list) else []
    for raw in calls:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
            log.warning("batch %s: an item without a task id is skipped: %.200r", self.request.id, raw)
            continue
        try:  # checked at call_tools() already; again, cheaply, for a message that did not come through it
            raw["arguments"] = check_arguments_shape(raw.get("arguments"), max_bytes=max_bytes)
            kw = raw.get("kwargs")
            kw = raw["kwargs"] = dict(kw) if isinstance(kw, dict) else {}
            kw["timeout_s"] = check_timeout(kw.get("timeout_s"))
            if not isinstance(raw.get("tool"), str):
                raise InvalidOptionError("a batched call needs a tool name")
        except AgentfulError as exc:
            self.backend.store_result(raw["id"], exc, states.FAILURE)
            continue
        items.append(raw)
    claims, incarnation = claims_store(), identity.current()
    owned: list[tuple[dict[str, Any], Claim | None]] = []
    handed_on = 0
    if claims is None or incarnation is None:
        owned = [(item, None) for item in items]
    else:
        nonce = uuid.uuid4().hex
        ids = [item["id"] for item in items]
        verdicts = patiently(lambda: claims.take_many(ids, incarnation, nonce), "claim the batch's calls")
        for item, (verdict, claim, owner) in zip(items, verdicts, strict=True):
            if verdict == "fenced":
                raise given_back(str(self.request.id), incarnation)
            if verdict == "own":
                owned.append((item, claim))
            elif verdict == "wait":  # another worker runs it: a call_tool copy waits for its result
                log.info("call %s (batched) runs on %s; handed on as a single call", item["id"], owner)
                _publish_one(server, item)
                handed_on += 1
    ran = _run(self, executor, server, owned, project_id, claims)
    _done(self.backend, self.request.id)
    return {"calls": len(calls), "ran": ran, "handed_on": handed_on}


def _run(
    task: Task, executor: Any, server: str, owned: list[tuple[dict[str, Any], Claim | None]],
    project: str | None, claims: Any,
) -> int:  # fmt: skip
    """The owned calls on the session at once; each one's result (or error, or retry) stored."""
    if not owned:
        return 0
    batch = []
    for item, claim in owned:
        kw = item["kwargs"]
        meta: dict[str, Any] = {
            "agentful/idempotency_key": kw.get("idempotency_key") or item["id"],
            "agentful/attempt": claim.attempt if claim is not None else 1,
            "agentful/task_id": item["id"],
        }
        if kw.get("project_id"):
            meta["agentful/project_id"] = kw["project_id"]
        if isinstance(item.get("trace_id"), str):
            meta[TRACE_META_KEY] = item["trace_id"]  # the call's own trace (its batch has one too)
        still_owner = owner_check(claims, claim) if claim is not None else None
        rerun = kw.get("retry_interrupted") is not False
        batch.append(BatchCall(item["tool"], item["arguments"], kw["timeout_s"], meta, rerun, still_owner))
    global _running_extra
    with _running_lock:
        _running_extra += len(owned) - 1
    try:
        outcomes: list[Any] = executor.call_many(server, batch, project=project)
    except Exception as exc:  # no session here at all (not served, not ready in time): each call
        outcomes = [exc] * len(owned)  # fails or retries alone, and its claim is freed or ended
    finally:
        with _running_lock:
            _running_extra -= len(owned) - 1
    worker = str(task.request.hostname or "")
    stores: list[tuple[str, Any, str, Any]] = []
    requeue: list[tuple[dict[str, Any], float, str | None]] = []
    lost = False
    for (item, claim), outcome in zip(owned, outcomes, strict=True):
        request = Context(
            id=item["id"], task="agentful.call_tool", args=[server, item["tool"], item["arguments"]],
            kwargs=item["kwargs"], hostname=task.request.hostname, retries=0,
            delivery_info=task.request.delivery_info, agentful_claim=claim,
        )  # fmt: skip
        if isinstance(outcome, tuple):
            raw, attempts, duration_ms = outcome
            stores.append((item["id"], tool_result(server, item["tool"], raw, worker, duration_ms, attempts),
                           states.SUCCESS, request))  # fmt: skip
            continue
        if isinstance(outcome, LostClaim):  # declared dead before it was sent: nothing ran
            lost = True
            continue
        state, error, countdown = _failed(executor, server, item, outcome)
        stores.append((item["id"], error, state, request))
        if state == states.RETRY:
            queue = server_queue(server) if isinstance(outcome, CircuitOpenError) else None
            requeue.append((item, countdown, queue))
    # Declared dead meanwhile (a call found its claim lost, or the store refused a result): the
    # batch goes back, and its next taker skips the calls that are done. Acknowledging it would
    # lose the lost calls on RabbitMQ, where this worker's message is the only copy.
    if not _store(task, stores) or lost:
        claim = next(c for _, c in owned if c is not None)
        raise given_back(str(task.request.id), claim.incarnation)
    for item, countdown, queue in requeue:  # after the RETRY freed each claim
        _publish_one(server, item, countdown=countdown, queue=queue, retries=1)
    return len(owned)


def _failed(
    executor: Any, server: str, item: dict[str, Any], exc: BaseException
) -> tuple[str, BaseException, float]:
    """What becomes of a call that raised: (RETRY, exc, countdown) or (FAILURE, error, 0)."""
    again = item["kwargs"].get("retry_interrupted")
    if isinstance(exc, ToolTimeoutError):
        if not (again if again is not None else executor.rerun_safe(server, item["tool"])):
            return states.FAILURE, not_retried(exc), 0.0
    elif isinstance(exc, ServerCrashedError) and again is False:
        return states.FAILURE, exc, 0.0
    if isinstance(exc, TransientError):
        policy = RetryPolicy.from_config(get_config().mcp.client.retry)
        if policy.should_retry(1):
            return states.RETRY, exc, policy.delay_s(1, _jitter)
        return states.FAILURE, type(exc)(f"{exc} (gave up after 1 attempts)"), 0.0
    if isinstance(exc, Exception):
        return states.FAILURE, exc, 0.0
    return states.FAILURE, RuntimeError(f"the call was interrupted: {exc!r}"), 0.0


def _store(task: Task, entries: list[tuple[str, Any, str, Any]]) -> bool:
    """The results: those under a claim in one round trip, the rest as Celery stores them.
    False when the store refused one under its claim (its owner was declared dead)."""
    store_many = getattr(task.backend, "store_many", None)
    plain = entries
    stored = True
    if store_many is not None:
        claimed = [e for e in entries if e[3].agentful_claim is not None]
        plain = [e for e in entries if e[3].agentful_claim is None]
        if claimed:
            stored = all(patiently(lambda: store_many(claimed), "store the batch's results"))
    for task_id, result, state, request in plain:
        task.backend.store_result(task_id, result, state, request=request)
    return stored


def _done(backend: Any, batch_id: str | None) -> None:
    """Tell the batch's caller (tasks/batch_result.py) that results of it are stored. Only a
    wake-up: a caller that misses it reads them within its `interval` anyway."""
    client = getattr(backend, "client", None)
    if client is None or not batch_id:
        return
    try:
        client.publish(channel(batch_id), 1)
    except Exception as exc:  # the results are stored; a caller missing this reads them anyway
        log.warning("batch %s: could not notify its caller (%s)", batch_id, exc)


def _publish_one(server: str, item: dict[str, Any], **options: Any) -> None:
    """One call alone, as the `call_tool` it is (same task id): a batch of one, or a call of a
    batch going back to the queue (`retries`, `countdown`: its retry)."""
    args = (server, item["tool"], item["arguments"])
    kwargs = {k: v for k, v in item["kwargs"].items() if v is not None}
    options = {k: v for k, v in options.items() if v}
    options.update(argsrepr=call_repr(*args), kwargsrepr=kwargs_repr(kwargs))
    trace_id = item.get("trace_id")
    with trace_scope(trace_id) if isinstance(trace_id, str) else contextlib.nullcontext():
        call_tool._publish(args, kwargs, item["id"], **options)


@task_revoked.connect(sender=call_batch)
def _revoke_calls(request: Any = None, expired: bool = False, **_: Any) -> None:
    """A batch revoked or expired before it ran: each of its calls says so, as a single call
    would (`.get()` raises TaskRevokedError) instead of waiting for a result never coming."""
    args = list(getattr(request, "args", None) or ())
    calls = args[1] if len(args) > 1 and isinstance(args[1], list) else []
    reason = "expired before a worker took it" if expired else "its batch was revoked"
    for item in calls:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            call_batch.backend.mark_as_revoked(item["id"], reason=reason)
    _done(call_batch.backend, getattr(request, "id", None))
