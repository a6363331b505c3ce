"""The gateway's MCP server: the cluster's tools, resources and prompts behind one endpoint.

Built on the SDK's lowlevel `Server` (not `MCPServer`): the tool list is not a set of Python
functions but the cluster's catalog, which changes while the gateway runs, so the handlers
answer from an index rebuilt from the catalog every `refreshS`. This module holds the
`Gateway` (its state, lifecycle and the catalog refresh) and wires each MCP method to the
module that serves it:

| module | serves |
|---|---|
| gateway/calls.py | tools/list, tools/call (the call path: Celery task, progress, cancellation) |
| gateway/mcptask_handlers.py | MCP Tasks: task-augmented tools/call, tasks/get, list, cancel, result |
| gateway/resources.py | resources/list, templates/list, read, subscribe, unsubscribe |
| gateway/prompts.py | prompts/list, prompts/get, completion/complete |
| gateway/notifications.py | list_changed to clients, subscriptions/listen, logging/setLevel |
| gateway/callers.py | who is calling (token, scopes, project) |
| gateway/remote.py | running the cluster's helper tasks (resources, prompts, completion) |
| gateway/streaming.py | over HTTP: SSE for a request with a progressToken, JSON for the rest |
| gateway/context.py | the Gateway as the handlers see it (a Protocol: they do not import this module) |
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import calls, mcptask_handlers, prompts, resources
from gateway.agents import agent_catalog
from gateway.callers import Caller, caller_of, raw_meta
from gateway.coalesce import Coalescer
from gateway.context import ResourceRoutes
from gateway.mcptasks import TaskStore
from gateway.naming import Index, Route, build_index
from gateway.notifications import Clients
from gateway.relay import wish_of
from gateway.results import ResultWaiter
from tasks.config_file import ConfigFile
from tasks.errors import AgentfulError, BrokerUnavailableError
from tasks.relay import RelayWish
from tasks.routing import AGENT_SERVER

log = logging.getLogger(__name__)

# Kept importable from here (tests and callers used these names before the split).
call_result = calls.call_result
cancel_call = calls.cancel_call


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


class Gateway:
    """One gateway process: the MCP server, its index of the cluster, its waits on results."""

    def __init__(self, config: ConfigFile) -> None:
        self.config = config
        self.section = config.gateway
        self.separator = config.gateway.separator
        self.default_server = config.gateway.default_server
        self.auth_enabled = config.gateway.auth.enabled
        # servers whose questions and log lines go to the caller (gateway/relay.py)
        self.relay_servers = frozenset(name for name, spec in config.servers.items() if spec.relay)
        self.index = Index()  # tools: exposed name -> (server, spec), of the servers a worker runs
        self.catalog_index = Index()  # the same for every server of the catalog
        self.tools_cache: list[types.Tool] | None = None
        self.refreshed_at = float("-inf")
        self.served: set[str] | None = None  # servers a live worker runs (None: unknown)
        self._registry: Any = None
        self.prompt_routes: dict[str, Route] = {}  # exposed prompt name -> (server, prompt)
        self.prompts_at = float("-inf")
        self.resource_routes = ResourceRoutes()
        self.coalescer = Coalescer()
        self.clients = Clients()
        self.waiter: ResultWaiter | None = None
        self.store: TaskStore | None = None
        self._background: list[asyncio.Task[None]] = []
        self.audit: Any = None
        self.server = _Server(
            config.mcp.server.name,
            version=config.mcp.server.version,
            instructions=(
                "One MCP endpoint for an agentful-mcp cluster. Tools are named "
                f"<server>{self.separator}<tool>; calls run on the cluster's workers."
            ),
            on_list_tools=partial(calls.list_tools, self),
            on_call_tool=partial(calls.call_tool, self),
            get_tool_input_schema=partial(calls.input_schema, self),
            on_list_resources=partial(resources.list_resources, self),
            on_list_resource_templates=partial(resources.list_resource_templates, self),
            on_read_resource=partial(resources.read_resource, self),
            on_subscribe_resource=partial(resources.subscribe, self),
            on_unsubscribe_resource=partial(resources.unsubscribe, self),
            on_list_prompts=partial(prompts.list_prompts, self),
            on_get_prompt=partial(prompts.get_prompt, self),
            on_completion=partial(prompts.complete, self),
            on_subscriptions_listen=self.clients.listen,
        )
        self.server.middleware.append(self._middleware)
        add = self.server.add_request_handler
        # Registered by hand, not with on_set_logging_level (deprecated in 2026-07-28: a warning).
        add("logging/setLevel", types.SetLevelRequestParams, self.clients.set_level)
        add("tasks/get", types.GetTaskRequestParams, partial(mcptask_handlers.tasks_get, self))
        add("tasks/result", types.GetTaskPayloadRequestParams, partial(mcptask_handlers.tasks_result, self))
        add("tasks/list", types.PaginatedRequestParams, partial(mcptask_handlers.tasks_list, self))
        add("tasks/cancel", types.CancelTaskRequestParams, partial(mcptask_handlers.tasks_cancel, self))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the result backend and start following the catalog."""
        from tasks.api import catalog_store
        from tasks.app import app
        from tasks.catalog import plain_url
        from tasks.redis_urls import is_redis_url

        store = catalog_store()
        backend_url = plain_url(str(app.conf.result_backend or ""))
        url = backend_url if is_redis_url(backend_url) else None
        if url is None and store is not None:
            url = store.url
        if url is None:
            raise BrokerUnavailableError(
                "the gateway needs Redis (or Valkey) as the result backend or broker: it waits for "
                "results on Redis pub/sub; set AGENTFUL_RESULT_BACKEND=redis://..."
            )
        backend = app.backend  # this thread's backend: the one apply_async uses
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
        self._background = [
            asyncio.create_task(self._refresh_forever(), name="gateway-catalog"),
            asyncio.create_task(resources.poll_forever(self), name="gateway-subscriptions"),
        ]
        if self.section.audit.enabled:
            from tasks.settings import get_settings

            self.audit = importlib.import_module("gateway.security.audit")
            self.audit.configure(self.section.audit, get_settings().data_dir)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.clients.close()
        if self.waiter is not None:
            await self.waiter.stop()

    # -- the catalog ------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-read the catalog and who serves it; True (and clients told) when the tool list
        changed. A server no live worker runs leaves the list (its calls could not be answered)
        and comes back with its first worker."""
        from tasks.api import cluster_catalog

        self.refreshed_at = time.monotonic()
        try:
            catalog = await asyncio.to_thread(cluster_catalog, refresh=True)
        except AgentfulError as exc:
            log.warning("cannot read the catalog: %s", exc)
            return False
        self.served = await self._running()
        agents = self.config.agents.enabled or (self.served is not None and AGENT_SERVER in self.served)
        catalog = {**catalog, **agent_catalog(agents)}  # agent runs, as the tool agent__run
        # Every catalog server, served or not: a call for one nobody serves is answered with
        # that reason (after a bounded wait for a worker), not as an unknown tool.
        self.catalog_index = build_index(catalog, self.separator, self.default_server)
        if self.served is not None:
            catalog = {name: entry for name, entry in catalog.items() if name in self.served}
        index = build_index(catalog, self.separator, self.default_server)
        if index.fingerprint == self.index.fingerprint:
            return False
        for why in index.skipped:
            if why not in self.index.skipped:
                log.warning("gateway: %s", why)
        first = not self.index.tools and not self.index.fingerprint
        self.index = index
        self.tools_cache = None
        if not first:
            await self.clients.lists_changed()
        return True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.section.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog refresh failed")

    async def _running(self) -> set[str] | None:
        """The servers some live worker runs now (None: the registry cannot say)."""
        from tasks.api import catalog_store
        from tasks.registry import Registry

        store = catalog_store()
        if store is None:
            return None
        if self._registry is None:
            self._registry = Registry(store.url)
        try:
            alive = await asyncio.to_thread(self._registry.alive)
        except Exception as exc:
            log.info("registry unreadable: %s", exc)
            return None
        return {name for beat in alive.values() for name in beat.servers}

    def servers(self) -> list[str]:
        """The servers of the catalog (those with a tool in the index)."""
        return sorted({route.server for route, _ in self.index.tools.values()})

    async def served_servers(self) -> list[str]:
        """The catalog's servers that a live worker runs now. The catalog outlives workers: a
        listing that asked a server nobody serves would wait out its whole timeout."""
        servers = self.servers()
        running = await self._running()
        return servers if running is None else [s for s in servers if s in running]

    async def serves(self, server: str) -> bool:
        """Whether a live worker runs `server` now (True when the registry cannot say)."""
        running = await self._running()
        return running is None or server in running

    # -- shared by the handlers -------------------------------------------------------------

    def caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller:
        return caller_of(ctx, auth_enabled=self.auth_enabled)

    def relay_wish(self, ctx: ServerRequestContext[Any, Any], server: str) -> RelayWish | None:
        """What this request's client answers of a `relay` server's questions and logs (None: nothing)."""
        if server not in self.relay_servers:
            return None
        connection = getattr(ctx.session, "_connection", None)  # the SDK keeps it private
        level = self.clients.log_levels.get(connection, "info") if connection is not None else "info"
        wish = wish_of(ctx, level, raw_meta(ctx.params))
        return wish if wish.wants() else None

    def require_waiter(self) -> ResultWaiter:
        if self.waiter is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is starting; try again")
        return self.waiter

    def require_store(self) -> TaskStore:
        if self.store is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is starting; try again")
        return self.store

    def record(
        self, caller: Caller, route: Route, outcome: str, started: float, trace_id: str, error: object = None
    ) -> None:
        """One audit line (gateway.security.audit) per call: ok, tool_error, failed, denied, cancelled."""
        if self.audit is None:
            return
        try:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self.audit.record(
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

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        self.clients.seen(ctx)
        if (
            ctx.method == "tools/call"
            and ctx.request_id is not None
            and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
            and isinstance(ctx.params, Mapping)
            and ctx.params.get("task") is not None
        ):
            # A task-augmented call answers CreateTaskResult, which the SDK's tools/call result
            # check (CallToolResult) would refuse: the middleware answers it itself.
            return await mcptask_handlers.start_task(self, ctx)
        return await call_next(ctx)


def _result_expires_s() -> int:
    from tasks.settings import get_settings

    return int(get_settings().result_expires_s)
