"""The gateway's MCP server: the cluster's tools, resources and prompts behind one endpoint.

Built on the SDK's lowlevel `Server` (not `MCPServer`): the tool list is not a set of Python
functions but the cluster's catalog, which changes while the gateway runs, so the handlers
answer tools/list and tools/call from an index rebuilt from the catalog every `refreshS`.

- tools/call becomes `tasks.call_tool`, routed like any `.delay()` (the project for affinity:
  `X-Agentful-Project` header, else the token's client id, else `_meta["agentful/project"]`).
  The result arrives through one Redis pub/sub connection (gateway/results.py): no thread and
  no blocking wait per call.
- Progress: a call with a progressToken is submitted with `progress=True`; the worker's events
  are forwarded as notifications/progress. A cancelled request cancels the call on the worker.
- MCP Tasks (2025-11-25): a tools/call with `task` returns at once; the Celery task id is the
  MCP taskId and its state lives in the result backend and Redis (gateway/mcptasks.py), so a
  client can disconnect and fetch the result from a new connection, or another gateway.
- Resources and prompts: Celery tasks `list_resources`, `read_resource`, `list_prompts`,
  `get_prompt` run them on a worker holding the server's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from celery import states, uuid
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.mcptasks import TaskStore, task_status
from gateway.naming import Index, Route, build_index, names_for
from gateway.results import ResultWaiter
from tasks.config_file import ConfigFile
from tasks.errors import (
    AgentfulError,
    BrokerUnavailableError,
    InvalidArgumentsError,
    PayloadTooLargeError,
    PermanentError,
    UnknownServerError,
    UnknownToolError,
)
from tasks.telemetry.context import new_trace_id, trace_id_from_meta, trace_scope

log = logging.getLogger(__name__)

PROJECT_HEADER = "x-agentful-project"
PROJECT_META_KEY = "agentful/project"
SERVER_META_KEY = "agentful/server"  # resources/read: which server, when several offer the URI
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
# How long a tools/call may wait for its result. The worker bounds the call itself (the
# server's callTimeoutS, retries); this only keeps a forgotten wait from living forever.
MAX_WAIT_S = 3600.0
# How long a resources/prompts listing may wait for each server's answer.
LIST_TIMEOUT_S = 15.0
# An unknown tool name re-reads the catalog only if the index is older than this: a stream of
# bad names must not become a stream of catalog reads.
RECHECK_S = 0.5


class _Server(Server[Any]):
    """The lowlevel Server, advertising list_changed and (2025-11-25) the tasks utility."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(True, True, True),
            experimental_capabilities,
            extensions,
        )

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        caps = super().get_capabilities(
            notification_options, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if protocol_version in MODERN_PROTOCOL_VERSIONS:
            return caps  # tasks left the core protocol in 2026-07-28
        return caps.model_copy(
            update={
                "tasks": types.ServerTasksCapability(
                    list=types.TasksListCapability(),
                    cancel=types.TasksCancelCapability(),
                    requests=types.ServerTasksRequestsCapability(
                        tools=types.TasksToolsCapability(call=types.TasksCallCapability())
                    ),
                )
            }
        )


@dataclass
class Caller:
    """Who is calling: the token's client (auth on) and the project for affinity."""

    client_id: str | None
    scopes: list[str] | None  # None: auth is off, everything is allowed
    project: str | None


def _text_result(text: str, *, is_error: bool) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def _trace_of(params: Mapping[str, Any] | None) -> str:
    """The MCP client's trace id (`_meta` traceparent or agentful/trace_id), else a new one."""
    return trace_id_from_meta(dict(_raw_meta(params))) or new_trace_id()


def _raw_meta(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


class Gateway:
    """One gateway process: the MCP server, its index of the cluster, its waits on results."""

    def __init__(self, config: ConfigFile) -> None:
        self.config = config
        self.section = config.gateway
        self.separator = config.gateway.separator
        self.default_server = config.gateway.default_server
        self.auth_enabled = config.gateway.auth.enabled
        self.index = Index()
        self._tools_cache: list[types.Tool] | None = None
        self.bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self.bus)
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._resource_owner: dict[str, list[str]] = {}
        self._templates: dict[str, list[str]] = {}
        self._prompts: dict[str, Route] = {}
        self._refreshed_at = self._prompts_at = self._listed_at = float("-inf")
        self.waiter: ResultWaiter | None = None
        self.store: TaskStore | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._audit: Any = None
        self._max_request_bytes = config.mcp.server.max_request_bytes
        self.server = _Server(
            config.mcp.server.name,
            version=config.mcp.server.version,
            instructions=(
                "One MCP endpoint for an agentful-mcp cluster. Tools are named "
                f"<server>{self.separator}<tool>; calls run on the cluster's workers."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_subscriptions_listen=self._listen,
        )
        self.server.middleware.append(self._middleware)
        self.server.add_request_handler("tasks/get", types.GetTaskRequestParams, self._tasks_get)
        self.server.add_request_handler("tasks/result", types.GetTaskPayloadRequestParams, self._tasks_result)
        self.server.add_request_handler("tasks/list", types.PaginatedRequestParams, self._tasks_list)
        self.server.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, self._tasks_cancel)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the result backend and start following the catalog."""
        from tasks.api import catalog_store
        from tasks.app import app

        store = catalog_store()
        backend_url = str(app.conf.result_backend or "")
        url = backend_url if backend_url.startswith(("redis://", "rediss://", "unix://")) else None
        if url is None and store is not None:
            url = store.url
        if url is None:
            raise BrokerUnavailableError(
                "the gateway needs Redis (or Valkey) as the result backend or broker: it waits for "
                "results on Redis pub/sub; set AGENTFUL_RESULT_BACKEND=redis://..."
            )
        backend = app.backend  # this thread's backend: the one apply_async below uses
        # Celery's Redis backend subscribes its own (synchronous) ResultConsumer to every task
        # published with a result (`on_task_call`), for `AsyncResult.get()`. The gateway never
        # calls get(): it waits on its own pattern subscription, so that per-call SUBSCRIBE
        # (a blocking round trip on the event loop, and a channel nobody drains) is switched
        # off for this thread's backend only.
        backend.on_task_call = lambda producer, task_id: None
        prefix = backend.task_keyprefix
        self.waiter = ResultWaiter(url, key_prefix=prefix.decode() if isinstance(prefix, bytes) else prefix)
        await self.waiter.start()
        self.store = TaskStore(self.waiter, ttl_s=_result_expires_s())
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="gateway-catalog")
        if self.section.audit.enabled:
            from tasks.settings import get_settings

            self._audit = importlib.import_module("gateway.security.audit")
            self._audit.configure(self.section.audit, get_settings().data_dir)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        self._listen.close()
        if self.waiter is not None:
            await self.waiter.stop()

    # -- the catalog ------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-read the catalog; True (and clients told) when the tool list changed."""
        from tasks.api import cluster_catalog

        self._refreshed_at = time.monotonic()
        try:
            catalog = await asyncio.to_thread(cluster_catalog, refresh=True)
        except AgentfulError as exc:
            log.warning("cannot read the catalog: %s", exc)
            return False
        index = build_index(catalog, self.separator, self.default_server)
        if index.fingerprint == self.index.fingerprint:
            return False
        for why in index.skipped:
            if why not in self.index.skipped:
                log.warning("gateway: %s", why)
        first = not self.index.tools and not self.index.fingerprint
        self.index = index
        self._tools_cache = None
        if not first:
            await self.notify_changed()
        return True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.section.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog refresh failed")

    async def notify_changed(self) -> None:
        """Tell every client the tool (and prompt, resource) lists changed."""
        for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
            await self.bus.publish(event)  # 2026-07-28 clients: subscriptions/listen streams
        for connection in list(self._connections):  # 2025-11-25 clients: their standalone stream
            try:
                await connection.send_tool_list_changed()
                await connection.send_prompt_list_changed()
                await connection.send_resource_list_changed()
            except Exception as exc:
                log.debug("list_changed not delivered to a connection: %s", exc)
                self._connections.discard(connection)

    # -- callers ----------------------------------------------------------------------------

    def caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller:
        """The caller: token (when auth is on) and project, by the documented precedence."""
        client_id: str | None = None
        scopes: list[str] | None = None
        if self.auth_enabled:
            token = get_access_token()
            if token is None:
                raise MCPError(types.INVALID_REQUEST, "authentication required")
            client_id, scopes = token.client_id, list(token.scopes)
        project: str | None = None
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None:
            project = headers.get(PROJECT_HEADER) or None
        if project is None and client_id:
            project = client_id
        if project is None:
            value = _raw_meta(ctx.params).get(PROJECT_META_KEY)
            project = str(value) if value not in (None, "") else None
        return Caller(client_id, scopes, project)

    def _may_call(self, caller: Caller, server: str, tool: str) -> bool:
        if caller.scopes is None:
            return True
        from gateway.auth.scopes import may_call

        return bool(may_call(caller.scopes, server, tool))

    def _may_use(self, caller: Caller, kind: str, server: str, name: str) -> bool:
        if caller.scopes is None:
            return True
        scopes_module = importlib.import_module("gateway.auth.scopes")
        may_use: Callable[..., bool] | None = getattr(scopes_module, "may_use", None)
        return True if may_use is None else bool(may_use(caller.scopes, kind, server, name))

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        connection = getattr(ctx.session, "_connection", None)  # the SDK keeps it private
        if (
            connection is not None
            and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
            and connection.has_standalone_channel
        ):
            self._connections.add(connection)
        if (
            ctx.method == "tools/call"
            and ctx.request_id is not None
            and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
            and isinstance(ctx.params, Mapping)
            and ctx.params.get("task") is not None
        ):
            # A task-augmented call answers CreateTaskResult, which the SDK's tools/call result
            # check (CallToolResult) would refuse: the middleware answers it itself.
            return await self._start_task(ctx)
        return await call_next(ctx)

    # -- tools ------------------------------------------------------------------------------

    def _tool_list(self) -> list[types.Tool]:
        if self._tools_cache is None:
            out = []
            for name, (route, spec) in self.index.tools.items():
                schema = spec.input_schema or {"type": "object"}
                out.append(
                    types.Tool(
                        name=name,
                        description=f"[{route.server}] {spec.description}".strip(),
                        input_schema=schema,
                        execution=types.ToolExecution(task_support="optional"),
                    )
                )
            self._tools_cache = out
        return self._tools_cache

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = self.caller(ctx)
        tools = self._tool_list()
        if caller.scopes is not None:
            allowed = []
            for tool in tools:
                found = self.index.route(tool.name)
                if found is not None and self._may_call(caller, found[0].server, found[0].name):
                    allowed.append(tool)
            tools = allowed
        return types.ListToolsResult(tools=tools)

    async def _resolve_tool(self, name: str) -> Route:
        found = self.index.route(name)
        if found is None and time.monotonic() - self._refreshed_at > RECHECK_S:
            await self.refresh()  # a server may have just appeared
            found = self.index.route(name)
        if found is None:
            hint = f"tools are named <server>{self.separator}<tool>"
            if self.separator not in name and self.default_server is None:
                hint += f", and {name!r} has no {self.separator!r}"
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name!r} ({hint}; see tools/list)")
        return found[0]

    async def _submit(
        self,
        route: Route,
        arguments: dict[str, Any] | None,
        caller: Caller,
        task_id: str,
        *,
        progress: bool,
        trace_id: str | None = None,
    ) -> None:
        # Published on the event loop itself: one LPUSH on the broker's pooled connection costs
        # less than handing it to a thread (measured: no throughput gain at 8 callers, more CPU
        # per call). The price: while the broker is unreachable the loop waits out its connect
        # timeout (broker_connection_timeout, 4 s) before the call fails with a clear error.
        # The trace id travels with the task (tasks.telemetry): the MCP client's, if it sent one.
        with trace_scope(trace_id):
            self._submit_call(route, arguments, caller, task_id, progress=progress)

    def _submit_call(
        self, route: Route, arguments: dict[str, Any] | None, caller: Caller, task_id: str, *, progress: bool
    ) -> None:
        """Queue the call (validation first: raises before anything is queued)."""
        from tasks.api import call_tool

        kwargs: dict[str, Any] = {"project_id": caller.project}
        if progress:
            kwargs["progress"] = True
        try:
            call_tool.apply_async((route.server, route.name, arguments), kwargs, task_id=task_id)
        except TypeError as exc:
            if not progress or "progress" not in str(exc):
                raise
            # The workers' side of progress is not there: the call runs without it.
            kwargs.pop("progress")
            call_tool.apply_async((route.server, route.name, arguments), kwargs, task_id=task_id)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        started = time.perf_counter()
        caller = self.caller(ctx)
        route = await self._resolve_tool(params.name)
        if not self._may_call(caller, route.server, route.name):
            self._record(caller, route, "denied", started, _trace_of(ctx.params))
            raise MCPError(
                types.INVALID_REQUEST,
                f"insufficient_scope: calling {route.server}/{route.name} needs "
                f"tools:call:{route.server}/{route.name}",
            )
        waiter = self._require_waiter()
        token = _raw_meta(ctx.params).get("progressToken")
        task_id = uuid()
        trace_id = _trace_of(ctx.params)

        async def forward(event: dict[str, Any]) -> None:
            await ctx.session.report_progress(
                float(event["progress"]), event.get("total"), event.get("message")
            )

        progress_channel = ""
        if token is not None:
            from tasks.progress import channel

            progress_channel = channel(task_id)
        await waiter.expect(
            task_id, progress=forward if token is not None else None, progress_channel=progress_channel
        )
        try:
            await self._submit(
                route, params.arguments, caller, task_id, progress=token is not None, trace_id=trace_id
            )
        except (InvalidArgumentsError, PayloadTooLargeError) as exc:
            waiter.forget(task_id)
            self._record(caller, route, "failed", started, trace_id, exc)
            return _text_result(f"{type(exc).__name__}: {exc}", is_error=True)
        except (UnknownServerError, UnknownToolError) as exc:
            waiter.forget(task_id)
            self._record(caller, route, "failed", started, trace_id, exc)
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name!r}: {exc}") from exc
        except AgentfulError as exc:
            waiter.forget(task_id)
            self._record(caller, route, "failed", started, trace_id, exc)
            raise MCPError(types.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from exc
        try:
            meta = await waiter.wait(task_id, MAX_WAIT_S)
        except asyncio.CancelledError:
            self._record(caller, route, "cancelled", started, trace_id)
            await asyncio.shield(asyncio.to_thread(cancel_call, task_id))
            raise
        except TimeoutError:
            self._record(caller, route, "failed", started, trace_id, "timeout")
            return _text_result(f"no result within {MAX_WAIT_S:.0f} s (task {task_id})", is_error=True)
        result = call_result(meta)
        self._record(caller, route, "tool_error" if result.is_error else "ok", started, trace_id)
        return result

    def _record(
        self, caller: Caller, route: Route, outcome: str, started: float, trace_id: str, error: object = None
    ) -> None:
        """One audit line (gateway.security.audit) per call: ok, tool_error, failed, denied, cancelled."""
        if self._audit is None:
            return
        try:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self._audit.record(
                caller.client_id,
                route.server,
                route.name,
                outcome,
                duration_ms,
                trace_id or None,
                error=error,
            )
        except Exception:
            log.exception("audit record failed")

    def _require_waiter(self) -> ResultWaiter:
        if self.waiter is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is starting; try again")
        return self.waiter

    # -- helper tasks (resources, prompts) --------------------------------------------------

    async def _run_task(self, name: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        """Run one of the `tasks` API's Celery tasks and wait for its value asynchronously."""
        import tasks

        task = getattr(tasks, name, None)
        if task is None:
            raise MCPError(types.METHOD_NOT_FOUND, f"this cluster has no {name} task yet")
        waiter = self._require_waiter()
        task_id = uuid()
        await waiter.expect(task_id)
        try:
            task.apply_async(args, task_id=task_id)
        except AgentfulError as exc:
            waiter.forget(task_id)
            code = types.INTERNAL_ERROR if isinstance(exc, BrokerUnavailableError) else types.INVALID_PARAMS
            raise MCPError(code, f"{type(exc).__name__}: {exc}") from exc
        try:
            meta = await waiter.wait(task_id, timeout_s)
        except TimeoutError:
            raise MCPError(
                types.INTERNAL_ERROR, f"{name}{args!r}: no answer within {timeout_s:.0f} s"
            ) from None
        if meta.get("status") != states.SUCCESS:
            failure = _exception(meta)
            # A permanent error is the request's fault (no such prompt, bad arguments, resource
            # not found: the server's -32602); anything else is the path's.
            code = types.INVALID_PARAMS if isinstance(failure, PermanentError) else types.INTERNAL_ERROR
            raise MCPError(code, f"{name} on {args[0]}: {type(failure).__name__}: {failure}")
        return meta.get("result")

    async def _fan_out(self, name: str) -> dict[str, Any]:
        """`name(server)` on every server of the catalog, concurrently; failures are logged."""
        servers = sorted({route.server for route, _ in self.index.tools.values()})
        answers = await asyncio.gather(
            *(self._run_task(name, (s,), LIST_TIMEOUT_S) for s in servers), return_exceptions=True
        )
        out: dict[str, Any] = {}
        for server, answer in zip(servers, answers, strict=True):
            if isinstance(answer, BaseException):
                log.info("%s(%s) failed: %s", name, server, answer)
            elif isinstance(answer, dict):
                out[server] = answer
        return out

    # -- resources --------------------------------------------------------------------------

    async def _listing(self, ctx: ServerRequestContext[Any, Any]) -> tuple[list[Any], list[Any]]:
        caller = self.caller(ctx)
        answers = await self._fan_out("list_resources")
        owners: dict[str, list[str]] = {}
        templates: dict[str, list[str]] = {}
        resources: list[Any] = []
        found_templates: list[Any] = []
        for server, answer in answers.items():
            for res in answer.get("resources") or []:
                uri = str(res.get("uri", ""))
                if not self._may_use(caller, "resources:read", server, uri):
                    continue
                if uri not in owners:
                    resources.append(res)
                owners.setdefault(uri, []).append(server)
            for tmpl in answer.get("resource_templates") or []:
                pattern = str(tmpl.get("uriTemplate", ""))
                if pattern not in templates:
                    found_templates.append(tmpl)
                templates.setdefault(pattern, []).append(server)
        self._resource_owner, self._templates = owners, templates
        self._listed_at = time.monotonic()
        return resources, found_templates

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        resources, _ = await self._listing(ctx)
        return types.ListResourcesResult.model_validate({"resources": resources}, by_name=False)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        _, templates = await self._listing(ctx)
        return types.ListResourceTemplatesResult.model_validate(
            {"resourceTemplates": templates}, by_name=False
        )

    def _owner_of(self, uri: str) -> list[str]:
        owners = self._resource_owner.get(uri)
        if owners:
            return owners
        matches: set[str] = set()
        for pattern, servers in self._templates.items():
            prefix = pattern.split("{", 1)[0]
            if prefix and uri.startswith(prefix):
                matches.update(servers)
        return sorted(matches)

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        caller = self.caller(ctx)
        uri = str(params.uri)
        owners = self._owner_of(uri)
        if not owners and time.monotonic() - self._listed_at > RECHECK_S:
            await self._listing(ctx)
            owners = self._owner_of(uri)
        if not owners and self.default_server is not None:
            owners = [self.default_server]
        chosen = _raw_meta(ctx.params).get(SERVER_META_KEY)
        if isinstance(chosen, str) and chosen in owners:
            owners = [chosen]  # the client picked one of the servers that offer it
        elif len(owners) > 1 and self.default_server in owners:
            owners = [str(self.default_server)]
        if not owners:
            raise MCPError(
                types.INVALID_PARAMS, f"Unknown resource: {uri!r} (no server of the cluster lists it)"
            )
        if len(owners) > 1:
            raise MCPError(
                types.INVALID_PARAMS,
                f"Ambiguous resource: {uri!r} is offered by servers {' and '.join(owners)}; "
                f'name one in _meta["{SERVER_META_KEY}"]',
            )
        server = owners[0]
        if not self._may_use(caller, "resources:read", server, uri):
            raise MCPError(types.INVALID_REQUEST, f"insufficient_scope: reading {uri!r} of {server}")
        answer = await self._run_task("read_resource", (server, uri), MAX_WAIT_S)
        return types.ReadResourceResult.model_validate(answer, by_name=False)

    # -- prompts ----------------------------------------------------------------------------

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        caller = self.caller(ctx)
        answers = await self._fan_out("list_prompts")
        specs: dict[tuple[str, str], dict[str, Any]] = {}
        for server, answer in sorted(answers.items()):
            if self.separator in server:
                continue
            for prompt in answer.get("prompts") or []:
                specs[(server, str(prompt.get("name", "")))] = prompt
        names, skipped = names_for(specs, self.separator, self.default_server)
        for why in skipped:
            log.warning("gateway prompts: %s", why)
        self._prompts, self._prompts_at = names, time.monotonic()
        prompts = [
            {**specs[(route.server, route.name)], "name": name}
            for name, route in names.items()
            if self._may_use(caller, "prompts:get", route.server, route.name)
        ]
        return types.ListPromptsResult.model_validate({"prompts": prompts}, by_name=False)

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        caller = self.caller(ctx)
        route = self._prompts.get(params.name)
        if route is None and time.monotonic() - self._prompts_at > RECHECK_S:
            await self._list_prompts(ctx, None)
            route = self._prompts.get(params.name)
        if route is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name!r} (see prompts/list)")
        if not self._may_use(caller, "prompts:get", route.server, route.name):
            raise MCPError(types.INVALID_REQUEST, f"insufficient_scope: prompt {route.server}/{route.name}")
        answer = await self._run_task(
            "get_prompt", (route.server, route.name, params.arguments or {}), MAX_WAIT_S
        )
        answer = {k: v for k, v in dict(answer).items() if v is not None}
        return types.GetPromptResult.model_validate(answer, by_name=False)

    # -- MCP Tasks (2025-11-25) -------------------------------------------------------------

    def _store(self) -> TaskStore:
        if self.store is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is starting; try again")
        return self.store

    async def _start_task(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        try:
            params = types.CallToolRequestParams.model_validate(ctx.params, by_name=False)
        except ValueError as exc:
            raise MCPError(types.INVALID_PARAMS, f"Invalid tools/call params: {exc}") from None
        caller = self.caller(ctx)
        route = await self._resolve_tool(params.name)
        if not self._may_call(caller, route.server, route.name):
            raise MCPError(
                types.INVALID_REQUEST, f"insufficient_scope: tools:call:{route.server}/{route.name}"
            )
        task_id = uuid()
        store = self._store()
        requested = params.task.ttl if params.task is not None else None
        task = await store.create(task_id, caller.client_id or "", route.server, route.name, requested)
        try:
            await self._submit(
                route, params.arguments, caller, task_id, progress=False, trace_id=_trace_of(ctx.params)
            )
        except (InvalidArgumentsError, PayloadTooLargeError) as exc:
            await store.delete(task_id, caller.client_id or "")
            return _text_result(f"{type(exc).__name__}: {exc}", is_error=True).model_dump(
                by_alias=True, mode="json", exclude_none=True
            )
        except AgentfulError as exc:
            await store.delete(task_id, caller.client_id or "")
            code = types.INTERNAL_ERROR if isinstance(exc, BrokerUnavailableError) else types.INVALID_PARAMS
            raise MCPError(code, f"{type(exc).__name__}: {exc}") from exc
        return {"task": task}

    async def _owned(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
        caller = self.caller(ctx)
        record = await self._store().get(task_id)
        if record is None or (self.auth_enabled and record.get("owner") != (caller.client_id or "")):
            raise MCPError(types.INVALID_PARAMS, f"Unknown task: {task_id!r} (expired, or not yours)")
        return record

    async def _tasks_get(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams
    ) -> Any:
        record = await self._owned(ctx, params.task_id)
        return await self._store().describe(params.task_id, record)

    async def _tasks_list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        caller = self.caller(ctx)
        owner = caller.client_id or "" if self.auth_enabled else None
        cursor = params.cursor if params is not None else None
        try:
            return await self._store().list(owner, cursor)
        except ValueError:
            raise MCPError(types.INVALID_PARAMS, f"Invalid cursor: {cursor!r}") from None

    async def _tasks_cancel(
        self, ctx: ServerRequestContext[Any, Any], params: types.CancelTaskRequestParams
    ) -> Any:
        record = await self._owned(ctx, params.task_id)
        store = self._store()
        current = await store.describe(params.task_id, record)
        if current["status"] in ("completed", "failed", "cancelled"):
            raise MCPError(
                types.INVALID_PARAMS,
                f"Cannot cancel task {params.task_id!r}: it is already {current['status']}",
            )
        await asyncio.to_thread(cancel_call, params.task_id)
        await store.mark_cancelled(params.task_id)
        return await store.describe(params.task_id, await store.get(params.task_id) or record)

    async def _tasks_result(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetTaskPayloadRequestParams
    ) -> Any:
        record = await self._owned(ctx, params.task_id)
        store = self._store()
        waiter = self._require_waiter()
        await waiter.expect(params.task_id)
        try:
            meta = await waiter.fetch(params.task_id)
            status = task_status(meta, record)
            if status not in ("completed", "failed", "cancelled"):
                meta = await waiter.wait(params.task_id, MAX_WAIT_S)
                record = await store.get(params.task_id) or record
                status = task_status(meta, record)
        finally:
            waiter.forget(params.task_id)
        if status == "cancelled":
            raise MCPError(types.INVALID_PARAMS, f"Task {params.task_id!r} was cancelled")
        result = call_result(meta or {}).model_dump(by_alias=True, mode="json", exclude_none=True)
        result["_meta"] = {**result.get("_meta", {}), RELATED_TASK_META_KEY: {"taskId": params.task_id}}
        return result


def _exception(meta: Mapping[str, Any]) -> BaseException:
    from tasks.app import app

    try:
        exc = app.backend.exception_to_python(meta.get("result"))
    except Exception as error:
        return RuntimeError(f"task failed: {meta.get('result')!r} ({error})")
    return exc if isinstance(exc, BaseException) else RuntimeError(str(exc))


TASK_ID_META_KEY = "agentful/task_id"
WORKER_META_KEY = "agentful/worker"


def call_result(meta: Mapping[str, Any]) -> types.CallToolResult:
    """A stored call_tool result (Celery meta) as an MCP CallToolResult, with the Celery task
    id (and the worker) in `_meta` (`agentful/task_id`, `agentful/worker`) for tracing.

    A worker-side failure (timeout, crashed server, ...) is a tool error the model can read,
    not a protocol error: the call itself was valid.
    """
    status = meta.get("status")
    trace: dict[str, Any] = {TASK_ID_META_KEY: meta.get("task_id")}
    if status == states.SUCCESS:
        value = meta.get("result") or {}
        if value.get("worker"):
            trace[WORKER_META_KEY] = value["worker"]
        return types.CallToolResult.model_validate(
            {
                "content": value.get("content") or [],
                "structuredContent": value.get("structured_content"),
                "isError": bool(value.get("is_error", False)),
                "_meta": trace,
            },
            by_name=False,
        )
    if status == states.REVOKED:
        result = _text_result("the call was cancelled", is_error=True)
    else:
        exc = _exception(meta)
        result = _text_result(f"{type(exc).__name__}: {exc}", is_error=True)
    return result.model_copy(update={"meta": trace})


def cancel_call(task_id: str) -> None:
    """Cancel a queued or running call: `tasks.api.cancel_call` (the worker cancels the MCP call)
    when the cluster has it, else Celery's revoke."""
    import tasks.api

    cancel: Callable[[str], Any] | None = getattr(tasks.api, "cancel_call", None)
    try:
        if cancel is not None:
            cancel(task_id)
        else:
            from tasks.app import app

            app.control.revoke(task_id)
    except Exception:
        log.exception("cancelling task %s failed", task_id)


def _result_expires_s() -> int:
    from tasks.settings import get_settings

    return int(get_settings().result_expires_s)
