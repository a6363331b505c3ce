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
import re
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

from tasks import broker_client
from tasks import progress as progress_channel
from tasks.app import app
from tasks.catalog import CachedCatalog, RedisCatalogStore, ServerTools, is_redis_url, safe_url
from tasks.contracts import ProgressFn, ToolInfo, ToolResult, get_executor
from tasks.errors import BrokerUnavailableError, InvalidArgumentsError, TransientError, UnknownServerError
from tasks.policy.backoff import RetryPolicy
from tasks.queues import SERVER_HEADER
from tasks.registry import Registry
from tasks.router import ClusterRouter, RedisAffinity
from tasks.routing import server_queue, use_cluster_router
from tasks.settings import NO_BROKER_URL, get_config, get_settings
from tasks.taskrepr import call_repr, kwargs_repr
from tasks.telemetry import hooks as _telemetry_hooks  # noqa: F401  (trace ids, logs, metrics: Celery signals)
from tasks.validation import check_arguments_shape, check_call

log = logging.getLogger(__name__)
_catalog: CachedCatalog | None = None
broker_client.install()  # one redis-py client per kombu channel, not one per command


def catalog_store() -> RedisCatalogStore | None:
    """The shared catalog store: the result backend or broker, whichever is Redis; else none."""
    for url in (str(app.conf.result_backend or ""), str(app.conf.broker_url or "")):
        if is_redis_url(url):
            return RedisCatalogStore(url)
    return None


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
                client = redis.Redis.from_url(store.url, socket_connect_timeout=3, socket_timeout=5)
                _router = ClusterRouter(
                    Registry(store.url),
                    RedisAffinity(client, ttl_s=settings.affinity_ttl_s),
                    algorithm=get_config().mcp.client.load_balancing.algorithm,
                    cache_s=settings.route_cache_s,
                )
    try:
        return _router.queue_for(server, project_id)
    except (redis.RedisError, BrokerUnavailableError):
        return server_queue(server)  # the publish that follows says what is wrong with the broker


use_cluster_router(_route)


def _require_broker() -> None:
    if app.conf.broker_url == NO_BROKER_URL:
        settings = get_settings()
        raise BrokerUnavailableError(
            "no broker configured: set AGENTFUL_BROKER_URL (redis://, amqp://) or start the "
            f"embedded one with `agentful up` (it writes its URL to {settings.broker_state_file})"
        )


def idempotent_task_id(key: str) -> str:
    """A stable task id for an idempotency key: the same key is the same call."""
    return "idem-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class _CheckedTask(Task):  # type: ignore[misc]
    """Publishing that turns broker faults into BrokerUnavailableError, naming the broker."""

    def _publish(self, args: Any, kwargs: Any, task_id: str | None, **options: Any) -> AsyncResult:
        server = (kwargs or {}).get("server") or (args[0] if args else None)
        if isinstance(server, str):  # for workers/failover.py, which cannot read a signed body
            options["headers"] = {**(options.get("headers") or {}), SERVER_HEADER: server}
        try:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            raise BrokerUnavailableError(
                f"cannot queue {self.name}: broker {safe_url(str(app.conf.broker_url))} is unreachable "
                f"({exc}); nothing was queued"
            ) from exc


class CallToolTask(_CheckedTask):
    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        bound = _bind_call(args or (), kwargs or {})
        _require_broker()
        config = get_config()
        bound["arguments"] = check_call(
            bound["server"],
            bound["tool"],
            bound["arguments"],
            catalog=_catalog_for(bound["server"], bound["tool"]),
            configured=frozenset(config.servers),
            max_bytes=config.mcp.server.max_request_bytes,
        )
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


_CALL_PARAMS = ("server", "tool", "arguments")
_CALL_KEYWORDS = ("project_id", "timeout_s", "idempotency_key", "progress")


def _bind_call(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """call_tool's parameters by name, with the same errors Python would give a bad call."""
    if len(args) > len(_CALL_PARAMS):
        raise TypeError(f"call_tool takes at most 3 positional arguments ({len(args)} given)")
    bound: dict[str, Any] = dict(zip(_CALL_PARAMS, args, strict=False))
    for key, value in kwargs.items():
        if key not in _CALL_PARAMS + _CALL_KEYWORDS:
            raise TypeError(f"call_tool got an unexpected keyword argument {key!r}")
        if key in bound:
            raise TypeError(f"call_tool got multiple values for argument {key!r}")
        bound[key] = value
    for required in ("server", "tool"):
        if required not in bound:
            raise TypeError(f"call_tool missing required argument {required!r}")
    bound.setdefault("arguments", None)
    return bound


def _stored_state(result: AsyncResult) -> str | None:
    try:
        return str(result.state)
    except (redis.RedisError, OSError, kombu.exceptions.OperationalError) as exc:
        raise BrokerUnavailableError(f"cannot read the result backend: {exc}") from exc


def _require_known_server(server: str) -> None:
    known = set(_catalog_for(server, None)) | set(get_config().servers)
    if server not in known:
        raise UnknownServerError(
            f"unknown MCP server {server!r}; the cluster offers: {', '.join(sorted(known)) or 'none'}"
        )


class ListToolsTask(_CheckedTask):
    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        _require_broker()
        server = (kwargs or {}).get("server") or (args[0] if args else None)
        if server is not None:
            _require_known_server(server)
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
) -> ToolResult:
    """Call `tool` on MCP server `server` with `arguments`; return the tool's result as JSON.

    `timeout_s` bounds the call on the worker (default: the server's `callTimeoutS`); the server
    is told the call was cancelled when it runs over. `project_id` keeps a project's calls
    together. With `idempotency_key`, a call whose result is stored is not run again. With
    `progress`, the server's progress notifications go to Redis channel
    `tasks.progress.channel(task_id)`. `cancel_call(task_id)` cancels it, queued or running.
    """
    if idempotency_key and self.request.id:
        previous = self.AsyncResult(self.request.id)
        if _stored_state(previous) == "SUCCESS":  # redelivered after it ran: don't run it twice
            stored: ToolResult = previous.result
            return stored
    executor = get_executor()
    args = check_arguments_shape(arguments, max_bytes=get_config().mcp.server.max_request_bytes)
    meta = {"agentful/task_id": self.request.id} if self.request.id else None
    if project_id:
        meta = {**(meta or {}), "agentful/project_id": project_id}
    started = time.perf_counter()
    try:
        raw, attempts = executor.call_tool(
            server,
            tool,
            args,
            timeout_s=timeout_s,
            meta=meta,
            on_progress=_progress_publisher(self.request.id) if progress else None,
            cancelled=_revoked_check(self.request.id),
        )
    except TransientError as exc:
        raise _retry_or_give_up(self, exc) from exc
    except TaskRevokedError as exc:
        _mark_cancelled(self, exc)
    attempts += self.request.retries
    return ToolResult(
        server=server,
        tool=tool,
        content=list(raw.get("content") or []),
        structured_content=raw.get("structuredContent"),
        is_error=bool(raw.get("isError", False)),
        worker=str(self.request.hostname or ""),
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        attempts=attempts,
    )


_jitter = random.Random()


def _retry_or_give_up(task: Task, exc: TransientError) -> BaseException:
    """Celery's retry with the config's backoff; past the last attempt, the error says so."""
    policy = RetryPolicy.from_config(get_config().mcp.client.retry)
    done = task.request.retries + 1
    if policy.should_retry(done):
        countdown = policy.delay_s(done, _jitter)
        return task.retry(exc=exc, countdown=countdown, max_retries=policy.max_attempts - 1)  # type: ignore[no-any-return]
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


def _progress_publisher(task_id: str | None) -> ProgressFn | None:
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


def _revoked_check(task_id: str | None) -> Callable[[], bool] | None:
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

    Celery's revoke, broadcast to every worker. Under prefork the revoke reaches the main
    process, not the child running the call: only `terminate=True` stops it there, by killing
    that child (and its MCP sessions) with SIGTERM. Don't pass `terminate` to threads or solo
    workers: their pools cannot terminate a job.
    """
    _require_broker()
    try:
        app.control.revoke(task_id, terminate=terminate)
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot cancel {task_id}: the broker is unreachable ({exc})") from exc


# --- resources and prompts ---------------------------------------------------------------


class ServerRequestTask(_CheckedTask):
    """A request to one server's session: the server must be known before anything is queued."""

    request_params: tuple[str, ...] = ("server",)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        bound = dict(zip(self.request_params, args or (), strict=False)) | dict(kwargs or {})
        unexpected = set(bound) - set(self.request_params)
        if unexpected or len(args or ()) > len(self.request_params):
            raise TypeError(f"{self.name} takes ({', '.join(self.request_params)}); got {sorted(bound)}")
        _require_broker()
        server = bound.get("server")
        if not isinstance(server, str) or not server:
            raise UnknownServerError(f"{self.name}: server must be a server name, got {server!r}")
        _require_known_server(server)
        self.check(bound)
        return self._publish(args, kwargs, task_id, **options)

    def check(self, bound: dict[str, Any]) -> None:
        """The task's own cheap checks of its arguments (raise before anything is queued)."""


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ReadResourceTask(ServerRequestTask):
    request_params = ("server", "uri")

    def check(self, bound: dict[str, Any]) -> None:
        uri = bound.get("uri")
        if not isinstance(uri, str) or not _URI_SCHEME.match(uri):
            raise InvalidArgumentsError(
                f"resource URI must be a string with a scheme (e.g. file:///x), got {uri!r}"
            )


class GetPromptTask(ServerRequestTask):
    request_params = ("server", "name", "arguments")

    def check(self, bound: dict[str, Any]) -> None:
        name, arguments = bound.get("name"), bound.get("arguments")
        if not isinstance(name, str) or not name:
            raise InvalidArgumentsError(f"prompt name must be a non-empty string, got {name!r}")
        if arguments is not None and not (
            isinstance(arguments, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in arguments.items())
        ):
            raise InvalidArgumentsError(
                f"prompt arguments must be an object of strings (dict[str, str]), got {arguments!r}"
            )


@app.task(base=ServerRequestTask, name="agentful.list_resources")
def list_resources(server: str) -> dict[str, list[dict[str, Any]]]:
    """A server's resources and resource templates: {"resources": [...], "resource_templates": [...]}."""
    return get_executor().list_resources(server)


@app.task(base=ReadResourceTask, name="agentful.read_resource")
def read_resource(server: str, uri: str) -> dict[str, Any]:
    """One resource's contents: {"contents": [...]} (text or base64 blob items)."""
    return get_executor().read_resource(server, uri)


@app.task(base=ServerRequestTask, name="agentful.list_prompts")
def list_prompts(server: str) -> dict[str, list[dict[str, Any]]]:
    """A server's prompts: {"prompts": [...]}."""
    return get_executor().list_prompts(server)


@app.task(base=GetPromptTask, name="agentful.get_prompt")
def get_prompt(server: str, name: str, arguments: dict[str, str] | None = None) -> dict[str, Any]:
    """One prompt rendered with `arguments`: {"description": ..., "messages": [...]}."""
    return get_executor().get_prompt(server, name, arguments)


class CompleteTask(ServerRequestTask):
    request_params = ("server", "ref", "argument", "context")

    def check(self, bound: dict[str, Any]) -> None:
        ref, argument = bound.get("ref"), bound.get("argument")
        if not isinstance(ref, dict) or ref.get("type") not in ("ref/prompt", "ref/resource"):
            raise InvalidArgumentsError(
                f'ref must be {{"type": "ref/prompt" | "ref/resource", ...}}, got {ref!r}'
            )
        if not (isinstance(argument, dict) and isinstance(argument.get("name"), str)):
            raise InvalidArgumentsError(f'argument must be {{"name": str, "value": str}}, got {argument!r}')


@app.task(base=CompleteTask, name="agentful.complete")
def complete(
    server: str, ref: dict[str, Any], argument: dict[str, str], context: dict[str, str] | None = None
) -> dict[str, Any]:
    """completion/complete on a server: {"completion": {"values": [...], ...}} (empty without the
    server's completions capability). `ref` and `argument` are MCP wire dicts."""
    return get_executor().complete(server, ref, argument, context)


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
