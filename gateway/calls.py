"""tools/list and tools/call: the call path from an MCP request to a Celery task and back.

tools/call resolves the exposed name in the index (gateway/naming.py), checks the caller's
scopes, queues `tasks.call_tool` exactly like `call_tool.apply_async(...)` (validation first:
nothing is queued for bad arguments), and awaits the result on the gateway's one Redis pub/sub
connection (gateway/results.py). A request with a progressToken is submitted with
`progress=True` and the worker's progress events are forwarded as notifications/progress on
the request's stream (over HTTP that request answers as SSE: gateway/streaming.py). A request
the client cancels revokes the task (the worker cancels the MCP call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import mcp_types as types
from celery import states, uuid
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from gateway import agents
from gateway.callers import Caller, may_call, raw_meta, trace_of
from gateway.context import GatewayContext
from gateway.naming import Route
from gateway.relay import forward as relayed
from gateway.remote import exception_of
from tasks.errors import (
    AgentfulError,
    InvalidArgumentsError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnknownServerError,
    UnknownToolError,
)
from tasks.progress import channel
from tasks.relay import REPLY_TTL_S, RelayWish
from tasks.routing import AGENT_SERVER
from tasks.telemetry.context import new_trace_id, trace_scope, valid_trace_id

log = logging.getLogger(__name__)

# How long a tools/call may wait for its result. The worker bounds the call itself (the
# server's callTimeoutS, retries); this only keeps a forgotten wait from living forever.
MAX_WAIT_S = 3600.0
# An unknown tool name re-reads the catalog only if the index is older than this: a stream of
# bad names must not become a stream of catalog reads.
RECHECK_S = 0.5
TASK_ID_META_KEY = "agentful/task_id"
WORKER_META_KEY = "agentful/worker"


def text_result(text: str, *, is_error: bool) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def tool_list(gw: GatewayContext) -> list[types.Tool]:
    """Every tool of the index as MCP Tools (cached until the index changes)."""
    if gw.tools_cache is None:
        gw.tools_cache = [
            types.Tool(
                name=name,
                description=f"[{route.server}] {spec.description}".strip(),
                input_schema=spec.input_schema or {"type": "object"},
                execution=types.ToolExecution(task_support="optional"),
            )
            for name, (route, spec) in gw.index.tools.items()
        ]
    return gw.tools_cache


async def list_tools(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    """tools/list: every tool, or (auth on) those the caller's scopes allow it to call."""
    caller = gw.caller(ctx)
    tools = tool_list(gw)
    if caller.scopes is not None:
        allowed = []
        for tool in tools:
            found = gw.index.route(tool.name)
            if found is not None and may_call(caller, found[0].server, found[0].name):
                allowed.append(tool)
        tools = allowed
    return types.ListToolsResult(tools=tools)


def input_schema(gw: GatewayContext, name: str) -> dict[str, Any] | None:
    """A tool's inputSchema, for the SDK's check of a tools/call's `Mcp-Param-*` headers (the
    lowlevel Server's `get_tool_input_schema`). Without it the SDK runs the caller's whole
    tools/list, through every middleware, on each call to find that one schema: 13% of the
    gateway's CPU at 8 callers (py-spy). The same answer as that listing gives: a tool of the
    index the caller may call, else None (no check; the call's dispatch decides)."""
    found = gw.index.route(name)
    if found is None:
        return None
    route, spec = found
    if gw.auth_enabled:
        token = get_access_token()  # set by the SDK's auth middleware for this request
        if token is None:
            return None
        if not may_call(Caller(token.client_id, list(token.scopes), None), route.server, route.name):
            return None
    return spec.input_schema or {"type": "object"}


async def resolve_tool(gw: GatewayContext, name: str) -> Route:
    """The (server, tool) an exposed name stands for; -32602 naming the rule when none."""
    found = gw.index.route(name)
    if found is None and time.monotonic() - gw.refreshed_at > RECHECK_S:
        await gw.refresh()  # a server may have just appeared
        found = gw.index.route(name)
    if found is None:
        found = gw.catalog_index.route(name)  # known, but no live worker runs it (see call_tool)
    if found is None:
        hint = f"tools are named <server>{gw.separator}<tool>"
        if gw.separator not in name and gw.default_server is None:
            hint += f", and {name!r} has no {gw.separator!r}"
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name!r} ({hint}; see tools/list)")
    return found[0]


def submit(
    route: Route,
    arguments: dict[str, Any] | None,
    caller: Caller,
    task_id: str,
    *,
    progress: bool,
    trace_id: str | None = None,
    relay: dict[str, Any] | None = None,
) -> None:
    """Queue the call (validation first: raises before anything is queued).

    Published on the event loop itself: one LPUSH on the broker's pooled connection costs less
    than handing it to a thread (measured: no throughput gain at 8 callers, more CPU per call).
    The price: while the broker is unreachable the loop waits out its connect timeout
    (broker_connection_timeout, 4 s) before the call fails with a clear error. The trace id
    travels with the task (tasks.telemetry): the MCP client's, if it sent one.
    """
    from tasks.api import call_tool

    if route.server == AGENT_SERVER:
        with trace_scope(trace_id):
            agents.submit(arguments, caller.project, task_id)
        return
    kwargs: dict[str, Any] = {"project_id": caller.project}
    if progress:
        kwargs["progress"] = True
    if relay:
        kwargs["relay"] = relay
    with trace_scope(trace_id):
        try:
            call_tool.apply_async((route.server, route.name, arguments), kwargs, task_id=task_id)
        except TypeError as exc:
            if not progress or "progress" not in str(exc):
                raise
            # The workers' side of progress is not there: the call runs without it.
            kwargs.pop("progress")
            call_tool.apply_async((route.server, route.name, arguments), kwargs, task_id=task_id)


async def queue_call(
    gw: GatewayContext,
    route: Route,
    arguments: dict[str, Any] | None,
    caller: Caller,
    task_id: str,
    *,
    progress: bool,
    trace_id: str | None,
    relay: dict[str, Any] | None = None,
) -> None:
    """Queue the call: checked now, alone; then with the calls that arrive in the same turn of
    the loop, as one batch (gateway/coalesce.py). Progress, relayed calls and agent runs go
    alone (`submit`)."""
    if progress or relay or route.server == AGENT_SERVER or not gw.section.coalesce:
        submit(route, arguments, caller, task_id, progress=progress, trace_id=trace_id, relay=relay)
        return
    from tasks.batch import prepare_call

    call = {"server": route.server, "tool": route.name, "arguments": arguments, "project_id": caller.project}
    prepared = prepare_call(call, task_id=task_id, trace_id=valid_trace_id(trace_id) or new_trace_id())
    await gw.coalescer.submit(prepared)


async def call_tool(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    """tools/call: one `tasks.call_tool`, its progress forwarded, its result as a CallToolResult."""
    started = time.perf_counter()
    caller = gw.caller(ctx)
    route = await resolve_tool(gw, params.name)
    trace_id = trace_of(ctx.params)
    if not may_call(caller, route.server, route.name):
        gw.record(caller, route, "denied", started, trace_id)
        raise MCPError(
            types.INVALID_REQUEST,
            f"insufficient_scope: calling {route.server}/{route.name} needs "
            f"tools:call:{route.server}/{route.name}",
        )
    if not await served_soon(gw, route.server):
        gw.record(caller, route, "failed", started, trace_id, "unserved")
        return text_result(unserved_text(gw, route.server), is_error=True)
    waiter = gw.require_waiter()
    token = raw_meta(ctx.params).get("progressToken")
    task_id = uuid()
    wish = gw.relay_wish(ctx, route.server)  # a relay server's questions and logs (gateway/relay.py)
    await listen(waiter, ctx, task_id, token, wish)
    try:
        await queue_call(
            gw, route, params.arguments, caller, task_id, progress=token is not None, trace_id=trace_id,
            relay=wish.as_option() if wish is not None else None,
        )  # fmt: skip
    except asyncio.CancelledError:  # the client gave up while its call was being queued
        waiter.forget(task_id)
        gw.record(caller, route, "cancelled", started, trace_id)
        await asyncio.shield(asyncio.to_thread(cancel_call, task_id))
        raise
    except (InvalidArgumentsError, InvalidOptionError, PayloadTooLargeError) as exc:
        waiter.forget(task_id)
        gw.record(caller, route, "failed", started, trace_id, exc)
        return text_result(f"{type(exc).__name__}: {exc}", is_error=True)
    except (UnknownServerError, UnknownToolError) as exc:
        waiter.forget(task_id)
        gw.record(caller, route, "failed", started, trace_id, exc)
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name!r}: {exc}") from exc
    except AgentfulError as exc:
        waiter.forget(task_id)
        gw.record(caller, route, "failed", started, trace_id, exc)
        raise MCPError(types.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from exc
    try:
        result, failure = await await_result(gw, route, task_id)
    except asyncio.CancelledError:
        gw.record(caller, route, "cancelled", started, trace_id)
        raise
    if failure is not None:
        gw.record(caller, route, "failed", started, trace_id, failure)
    else:
        gw.record(caller, route, "tool_error" if result.is_error else "ok", started, trace_id)
    return result


async def listen(
    waiter: Any, ctx: ServerRequestContext[Any, Any], task_id: str, token: Any, wish: RelayWish | None
) -> None:
    """Before the call is queued: subscribe to its channel when its progress (the request had a
    progressToken) or a relay server's questions and log lines have somewhere to go."""

    async def push(key: str, body: str) -> None:
        await waiter.client.rpush(key, body)
        await waiter.client.expire(key, REPLY_TTL_S)

    async def forward(event: dict[str, Any]) -> None:
        if "kind" in event:
            await relayed(ctx, event, push)
        elif token is not None:
            await ctx.session.report_progress(
                float(event["progress"]), event.get("total"), event.get("message")
            )

    listening = token is not None or wish is not None
    await waiter.expect(task_id, progress=forward if listening else None, progress_channel=channel(task_id))


async def await_result(
    gw: GatewayContext, route: Route, task_id: str
) -> tuple[types.CallToolResult, str | None]:
    """The call's result (and None); or, when every worker of its server goes away meanwhile,
    an error and why (the call is cancelled: it must not run later for a client that has
    stopped waiting)."""
    waiting = asyncio.ensure_future(gw.require_waiter().wait(task_id, MAX_WAIT_S))
    watchdog = asyncio.ensure_future(unserved_for_long(gw, route.server))
    try:
        await asyncio.wait({waiting, watchdog}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the client cancelled
        waiting.cancel()
        watchdog.cancel()
        await asyncio.shield(asyncio.to_thread(cancel_call, task_id))
        raise
    watchdog.cancel()
    if not waiting.done():
        waiting.cancel()
        await asyncio.shield(asyncio.to_thread(cancel_call, task_id))
        text = unserved_text(gw, route.server) + f"; the call (task {task_id}) was cancelled"
        return text_result(text, is_error=True), "unserved"
    try:
        return call_result(waiting.result()), None
    except TimeoutError:
        return text_result(f"no result within {MAX_WAIT_S:.0f} s (task {task_id})", is_error=True), "timeout"


def unserved_text(gw: GatewayContext, server: str) -> str:
    return (
        f"ServerUnavailableError: no live worker runs MCP server {server!r} (waited "
        f"{gw.section.unserved_wait_s:g} s); its tools come back in tools/list when one does"
    )


async def served_soon(gw: GatewayContext, server: str) -> bool:
    """Whether a live worker runs `server`, waiting up to `unservedWaitS` for one to come."""
    if gw.served is None or server in gw.served:
        return True
    deadline = time.monotonic() + gw.section.unserved_wait_s
    while True:
        if await gw.serves(server):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


async def unserved_for_long(gw: GatewayContext, server: str, tick_s: float = 1.0) -> None:
    """Returns once no live worker has run `server` for `unservedWaitS` (the gateway's view,
    refreshed every `refreshS`): a call waiting for a result that cannot come stops waiting."""
    since: float | None = None
    while True:
        await asyncio.sleep(tick_s)
        if gw.served is None or server in gw.served:
            since = None
            continue
        since = since or time.monotonic()
        if time.monotonic() - since >= gw.section.unserved_wait_s:
            return


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
        if "content" not in value and "session_id" in value:  # an agent run (gateway/agents.py)
            return types.CallToolResult.model_validate(
                {**agents.as_call_result(value), "_meta": trace}, by_name=False
            )
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
        result = text_result("the call was cancelled", is_error=True)
    else:
        exc = exception_of(meta)
        result = text_result(f"{type(exc).__name__}: {exc}", is_error=True)
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
