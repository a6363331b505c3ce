"""The public tasks: `call_tool` and `list_tools`.

    from tasks import call_tool
    call_tool.delay("time", "get_current_time", {"timezone": "UTC"}).get(timeout=10)

A call is checked before it is queued (unknown server or tool, bad arguments, oversized
payload, no broker) and raises at once; on the worker it runs on a persistent MCP session.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import kombu.exceptions
import redis
from celery import Task
from celery.exceptions import Ignore, TaskRevokedError
from celery.result import AsyncResult
from celery.worker import state as worker_state

from tasks import progress as progress_channel
from tasks.app import app
from tasks.catalog import CachedCatalog, ServerTools, safe_url
from tasks.checks import bind_call, check_options, check_project
from tasks.contracts import ProgressFn, ToolInfo, ToolResult, get_executor
from tasks.delivery.claims import Claim, ClaimStore, LostClaim
from tasks.delivery.owner import claim_store, given_back, own_call, owner_check, patiently, still_owned
from tasks.errors import (
    BrokerUnavailableError,
    CircuitOpenError,
    ServerCrashedError,
    ToolTimeoutError,
    TransientError,
    UnknownServerError,
)
from tasks.policy.backoff import RetryPolicy
from tasks.queues import SERVER_HEADER
from tasks.redisconn import connect
from tasks.registry import Registry, lease_s
from tasks.relay import RelayTarget, check_relay
from tasks.router import ClusterRouter, RedisAffinity
from tasks.routing import server_queue, use_cluster_router
from tasks.settings import NO_BROKER_URL, get_config, get_settings
from tasks.store import catalog_store as catalog_store  # noqa: PLC0414  (re-exported: its old home)
from tasks.taskrepr import call_repr, kwargs_repr
from tasks.telemetry import hooks as _telemetry_hooks  # noqa: F401  (trace ids, logs, metrics: Celery signals)
from tasks.validation import (
    check_arguments_shape,
    check_call,
    check_timeout,
)

log = logging.getLogger(__name__)
_catalog: CachedCatalog | None = None


# A call naming a server or tool that the cached catalog lacks re-reads it if it is older than
# this: a worker may have just published it. Bounded, so a stream of bad calls can't flood Redis.
_RECHECK_AGE_S = 0.5


def cluster_catalog(*, refresh: bool = False, max_age_s: float | None = None) -> dict[str, ServerTools]:
    """The catalog as this process knows it (cached for `catalog_cache_s`)."""
    global _catalog
    if _catalog is None:
        store = catalog_store()
        if store is None:
            return {}
        _catalog = CachedCatalog(store, ttl_s=get_settings().catalog_cache_s)
    return _catalog.get(refresh=refresh, max_age_s=max_age_s)


def _catalog_for(server: object, tool: object) -> dict[str, ServerTools]:
    catalog = cluster_catalog()
    entry = catalog.get(server) if isinstance(server, str) else None
    if entry is None or tool not in entry.tools:
        catalog = cluster_catalog(max_age_s=_RECHECK_AGE_S)
    return catalog


_router: ClusterRouter | None = None
_router_lock = threading.Lock()


def _route(server: str, project_id: str | None) -> str:
    """The queue for a call (installed as the cluster router of `tasks.routing`)."""
    global _router
    if _router is None:
        store = catalog_store()
        if store is None:  # no Redis anywhere: no registry, every call on its shared queue
            return server_queue(server)
        with _router_lock:
            if _router is None:
                settings = get_settings()
                client = connect(store.url, socket_connect_timeout=3, socket_timeout=5)
                has_workspace = get_config().projects.names
                _router = ClusterRouter(
                    Registry(store.url),
                    RedisAffinity(client, ttl_s=settings.affinity_ttl_s, sticky=has_workspace),
                    algorithm=get_config().mcp.client.load_balancing.algorithm,
                    cache_s=settings.route_cache_s,
                    sticky=has_workspace,
                )
    try:
        return _router.queue_for(server, project_id)
    except (redis.RedisError, BrokerUnavailableError):
        return server_queue(server)  # the publish that follows says what is wrong with the broker


use_cluster_router(_route)


def require_broker() -> None:
    if app.conf.broker_url == NO_BROKER_URL:
        settings = get_settings()
        raise BrokerUnavailableError(
            "no broker configured: set AGENTFUL_BROKER_URL (redis://, amqp://) or start the "
            f"embedded one with `agentful up` (it writes its URL to {settings.broker_state_file})"
        )


def idempotent_task_id(key: str) -> str:
    """A stable task id for an idempotency key: the same key is the same call."""
    return "idem-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class CheckedTask(Task):  # type: ignore[misc]
    """Publishing that turns broker faults into BrokerUnavailableError, naming the broker."""

    def server_of(self, args: Any, kwargs: Any) -> object:
        """The server whose shared queue takes this task if its worker dies (workers/failover.py)."""
        return (kwargs or {}).get("server") or (args[0] if args else None)

    def _publish(self, args: Any, kwargs: Any, task_id: str | None, **options: Any) -> AsyncResult:
        server = self.server_of(args, kwargs)
        if isinstance(server, str):  # for workers/failover.py, which cannot read a signed body
            options["headers"] = {**(options.get("headers") or {}), SERVER_HEADER: server}
        try:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            raise BrokerUnavailableError(
                f"cannot queue {self.name}: broker {safe_url(str(app.conf.broker_url))} is unreachable "
                f"({exc}); nothing was queued"
            ) from exc


class CallToolTask(CheckedTask):
    Request = "tasks.delivery.request:CallRequest"  # frees a claim lost with a pool process

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        bound = bind_call(args or (), kwargs or {})
        check_options(bound, options)
        require_broker()
        config = get_config()
        check_project(bound, config)
        bound["arguments"] = checked_arguments(bound["server"], bound["tool"], bound["arguments"], config)
        key = bound.get("idempotency_key")
        if key:
            task_id = idempotent_task_id(str(key))
            existing = self.AsyncResult(task_id)
            if _stored_state(existing) == "SUCCESS":
                return existing
        server, tool, arguments = bound.pop("server"), bound.pop("tool"), bound.pop("arguments")
        # What Flower and task events show: `time.get_current_time(timezone='UTC')`, secrets masked.
        options.setdefault("argsrepr", call_repr(server, tool, arguments))
        options.setdefault("kwargsrepr", kwargs_repr(bound))
        return self._publish((server, tool, arguments), bound, task_id, **options)


def checked_arguments(server: Any, tool: Any, arguments: Any, config: Any) -> dict[str, Any]:
    """The call's arguments checked against the tool catalog (tasks.validation.check_call)."""
    return check_call(
        server,
        tool,
        arguments,
        catalog=_catalog_for(server, tool),
        configured=frozenset(config.servers),
        max_bytes=config.mcp.server.max_request_bytes,
    )


def _stored_state(result: AsyncResult) -> str | None:
    try:
        return str(result.state)
    except (redis.RedisError, OSError, kombu.exceptions.OperationalError) as exc:
        raise BrokerUnavailableError(f"cannot read the result backend: {exc}") from exc


def require_known_server(server: str) -> None:
    known = set(_catalog_for(server, None)) | set(get_config().servers)
    if server not in known:
        raise UnknownServerError(
            f"unknown MCP server {server!r}; the cluster offers: {', '.join(sorted(known)) or 'none'}"
        )


class ListToolsTask(CheckedTask):
    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        require_broker()
        server = (kwargs or {}).get("server") or (args[0] if args else None)
        if server is not None:
            require_known_server(server)
        return self._publish(args, kwargs, task_id, **options)


@app.task(base=CallToolTask, bind=True, name="agentful.call_tool")
def call_tool(
    self: Task,
    server: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    *,
    project_id: str | None = None,
    timeout_s: float | None = None,
    idempotency_key: str | None = None,
    progress: bool = False,
    retry_interrupted: bool | None = None,
    relay: dict[str, Any] | None = None,
) -> ToolResult:
    """Call `tool` on MCP server `server` with `arguments`; return the tool's result as JSON.

    `timeout_s` bounds the call on the worker (default: the server's `callTimeoutS`); the server
    is told the call was cancelled when it runs over. `project_id` keeps a project's calls
    together. With `idempotency_key`, a call whose result is stored is not run again. With
    `progress`, the server's progress notifications go to Redis channel
    `tasks.progress.channel(task_id)`. `cancel_call(task_id)` cancels it, queued or running.
    `relay` says what the caller answers of a `relay: true` server's sampling and elicitation
    requests and log messages, sent on the same channel (tasks/relay.py).
    A call interrupted inside the server (it timed out, the server crashed under it) may have
    taken effect: it is run again only if the tool says that is harmless (read-only or
    idempotent) or `retry_interrupted=True`; `retry_interrupted=False` never runs it again.
    """
    executor = get_executor()
    args = check_arguments_shape(arguments, max_bytes=get_config().mcp.server.max_request_bytes)
    # Checked at .delay() already; again here, cheaply, for a message that did not come through
    # it (celery call, another client): one caller's option must not reach the shared session.
    timeout_s = check_timeout(timeout_s)
    # At most one worker runs a call at a time; only that owner stores its result. A copy of a
    # call that ran (redelivered, restored, submitted twice) ends here without running it.
    claims = claims_store()
    claim = own_call(self, claims)
    attempt = claim.attempt if claim is not None else self.request.retries + 1
    meta: dict[str, Any] = {
        "agentful/idempotency_key": idempotency_key or self.request.id,
        "agentful/attempt": attempt,
    }
    if self.request.id:
        meta["agentful/task_id"] = self.request.id
    if project_id:
        meta["agentful/project_id"] = project_id
    # A call the server crashed under cannot be running any more: it runs once more on the new
    # session (the window docs/reliability.md names; `_meta` says which attempt it is), unless
    # the caller said no. A call that timed out may still be running in the server: run again
    # only if the tool says that is harmless, or the caller asked.
    rerun_crashed = retry_interrupted is not False
    rerun_timed_out = (
        retry_interrupted if retry_interrupted is not None else executor.rerun_safe(server, tool)
    )
    started = time.perf_counter()
    try:
        raw, attempts = executor.call_tool(
            server,
            tool,
            args,
            timeout_s=timeout_s,
            meta=meta,
            on_progress=progress_publisher(self.request.id) if progress else None,
            cancelled=revoked_check(self.request.id),
            still_owner=owner_check(claims, claim) if claim is not None and claims is not None else None,
            rerun=rerun_crashed,
            project=project_id,
            relay=relay_target(self.request.id, relay),
        )
    except ToolTimeoutError as exc:
        if not rerun_timed_out:
            _give_back_if_lost(claims, claim)
            raise not_retried(exc) from exc
        raise _retry_or_give_up(self, exc) from exc
    except ServerCrashedError as exc:
        if not rerun_crashed:
            _give_back_if_lost(claims, claim)
            raise
        raise _retry_or_give_up(self, exc) from exc
    except TransientError as exc:
        raise _retry_or_give_up(self, exc) from exc
    except TaskRevokedError as exc:
        _mark_cancelled(self, exc)
    except LostClaim as exc:
        assert claim is not None
        raise given_back(claim.task_id, claim.incarnation) from exc
    except Exception:
        _give_back_if_lost(claims, claim)
        raise
    attempts += self.request.retries
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    result = tool_result(server, tool, raw, str(self.request.hostname or ""), duration_ms, attempts)
    # Stored here, under the claim, so that a result the store refuses (this worker was declared
    # dead, even after its last check) sends the call back instead of losing it.
    store = getattr(self.backend, "store_claimed", None)
    if (
        claim is not None
        and store is not None
        and not patiently(lambda: store(self.request.id, result, "SUCCESS", self.request), "store the result")
    ):
        raise given_back(claim.task_id, claim.incarnation)
    return result


def not_retried(exc: ToolTimeoutError) -> ToolTimeoutError:
    """A timed-out call that is not run again, saying why."""
    return ToolTimeoutError(
        f"{exc}; not retried: it may still run or have taken effect (the tool is not marked "
        "read-only or idempotent; pass retry_interrupted=True to retry it)"
    )


def _give_back_if_lost(claims: ClaimStore | None, claim: Claim | None) -> None:
    """The call ran, but this worker may have been declared dead meanwhile: if its claim is no
    longer its own, the message goes back to the queue (tasks.delivery.owner.given_back)."""
    if claim is None or claims is None:
        return
    if not still_owned(claims, claim, lease_s(get_settings().heartbeat_s)):
        raise given_back(claim.task_id, claim.incarnation)


def tool_result(
    server: str, tool: str, raw: dict[str, Any], worker: str, duration_ms: float, attempts: int
) -> ToolResult:
    """What a call returns: the MCP result (wire JSON) and where and how long it ran."""
    return ToolResult(
        server=server,
        tool=tool,
        content=list(raw.get("content") or []),
        structured_content=raw.get("structuredContent"),
        is_error=bool(raw.get("isError", False)),
        worker=worker,
        duration_ms=duration_ms,
        attempts=attempts,
    )


_jitter = random.Random()


def claims_store() -> ClaimStore | None:
    """Claims live with the results, on the store (None without Redis: no claims)."""
    store = catalog_store()
    if store is None:
        return None
    return claim_store(store.url, ttl_s=float(get_settings().result_expires_s))


def _retry_or_give_up(task: Task, exc: TransientError) -> BaseException:
    """Celery's retry with the config's backoff; past the last attempt, the error says so."""
    policy = RetryPolicy.from_config(get_config().mcp.client.retry)
    done = task.request.retries + 1
    if policy.should_retry(done):
        countdown = policy.delay_s(done, _jitter)
        options: dict[str, Any] = {}
        server = task.request.args[0] if task.request.args else None
        if isinstance(exc, CircuitOpenError) and isinstance(server, str):
            # Not back to this worker (a project's affinity would send it here again before the
            # next heartbeat shows the open breaker): to the shared queue, which it left.
            options["queue"] = server_queue(server)
        return task.retry(exc=exc, countdown=countdown, max_retries=policy.max_attempts - 1, **options)  # type: ignore[no-any-return]
    return type(exc)(f"{exc} (gave up after {done} attempts)")


@app.task(base=ListToolsTask, bind=True, name="agentful.list_tools")
def list_tools(self: Task, server: str | None = None) -> dict[str, list[ToolInfo]]:
    """The tools the cluster offers, by server: one server's live list, or every published one."""
    executor = get_executor()
    if server is not None:
        return {server: executor.list_tools(server)}
    out: dict[str, list[ToolInfo]] = {}
    for name, entry in sorted(cluster_catalog(refresh=True).items()):
        out[name] = [ToolInfo(**t.to_json()) for t in entry.tools.values()]  # type: ignore[typeddict-item]
    for name, tools in executor.ready_tools().items():  # this worker's, if not yet published
        out.setdefault(name, tools)
    return out


def relay_target(task_id: str | None, option: Any) -> RelayTarget | None:
    """Where a call's server questions and log lines go (workers/relay.py), or None: no Redis,
    no task id, or a caller that answers nothing. Checked again here (a message not from .delay())."""
    wish = check_relay(option)
    store = catalog_store()
    if wish is None or store is None or not task_id:
        return None
    return RelayTarget(store.url, task_id, wish)


def progress_publisher(task_id: str | None) -> ProgressFn | None:
    """Publishes a call's progress on its channel; nothing without Redis or a task id."""
    store = catalog_store()
    if store is None or not task_id:
        return None
    url, failed = store.url, False

    def publish(value: float, total: float | None, message: str | None) -> None:
        nonlocal failed
        try:
            progress_channel.publish(url, task_id, value, total, message)
        except redis.RedisError as exc:  # progress is a courtesy: the call goes on without it
            if not failed:
                log.warning("cannot publish progress of %s: %s", task_id, exc)
            failed = True

    return publish


def revoked_check(task_id: str | None) -> Callable[[], bool] | None:
    """True once Celery's revoke reached this worker process (threads and solo pools: the
    control command updates `celery.worker.state.revoked` in the process that runs the call)."""
    if not task_id:
        return None
    return lambda: task_id in worker_state.revoked


def _mark_cancelled(task: Task, exc: TaskRevokedError) -> NoReturn:
    """Store Celery's own REVOKED state, as for a call revoked in the queue; `.get()` raises
    TaskRevokedError either way. Ignore keeps Celery from overwriting it (and acks the message)."""
    task.backend.mark_as_revoked(task.request.id, reason=str(exc), request=task.request)
    raise Ignore(str(exc))


def cancel_call(task_id: str, *, terminate: bool = False) -> None:
    """Cancel a call: queued, it never runs; running (threads pool, the default), the worker
    cancels the MCP call (the server is sent notifications/cancelled) and the task ends REVOKED.

    Celery's revoke, broadcast to every worker; and REVOKED stored as the call's result, so a
    worker that starts later (and never heard the broadcast) finds the call done and runs
    nothing. Under prefork the revoke reaches the main process, not the child running the call:
    only `terminate=True` stops it there, by killing that child (and its MCP sessions) with
    SIGTERM. Don't pass `terminate` to threads or solo workers: their pools cannot terminate a job.
    """
    require_broker()
    try:
        app.control.revoke(task_id, terminate=terminate)
        if catalog_store() is not None:
            app.backend.mark_as_revoked(task_id, reason="cancelled by its caller")
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot cancel {task_id}: the broker is unreachable ({exc})") from exc


@app.task(name="agentful.ping")
def ping() -> str:
    """A no-op: the bare-Celery baseline of the benchmarks, and a liveness probe."""
    return "pong"


@app.task(name="agentful.health_check")
def health_check(timeout_s: float = 5.0) -> dict[str, object]:
    """Beat's health check: every worker probes each of its MCP servers (a control broadcast).

    A server is marked unhealthy after `unhealthyThreshold` failed checks in a row and healthy
    after `healthyThreshold` good ones; the router avoids unhealthy ones. Results reach the
    registry (and `agentful status`) with each worker's next heartbeat.
    """
    app.control.broadcast("agentful_health_check", arguments={"timeout_s": timeout_s})
    return {"broadcast": "agentful_health_check", "timeout_s": timeout_s}
