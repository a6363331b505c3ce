"""The MCP Tasks requests (2025-11-25): a task-augmented tools/call, tasks/get, list, cancel, result.

The state lives in the result backend and Redis (gateway/mcptasks.py TaskStore), not in this
process: a client can disconnect and ask any gateway of the cluster. With auth on, a task
belongs to the token's client; another client's taskId is "Unknown task".
"""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types as types
from celery import uuid
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from gateway.callers import may_call, trace_of
from gateway.calls import MAX_WAIT_S, call_result, cancel_call, resolve_tool, submit, text_result
from gateway.context import GatewayContext
from gateway.mcptasks import TERMINAL, task_status
from tasks.errors import AgentfulError, BrokerUnavailableError, InvalidArgumentsError, PayloadTooLargeError

RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"


async def start_task(gw: GatewayContext, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """A tools/call with `task`: queue the call, answer CreateTaskResult at once."""
    try:
        params = types.CallToolRequestParams.model_validate(ctx.params, by_name=False)
    except ValueError as exc:
        raise MCPError(types.INVALID_PARAMS, f"Invalid tools/call params: {exc}") from None
    caller = gw.caller(ctx)
    route = await resolve_tool(gw, params.name)
    if not may_call(caller, route.server, route.name):
        raise MCPError(types.INVALID_REQUEST, f"insufficient_scope: tools:call:{route.server}/{route.name}")
    task_id = uuid()
    store = gw.require_store()
    requested = params.task.ttl if params.task is not None else None
    task = await store.create(task_id, caller.client_id or "", route.server, route.name, requested)
    try:
        submit(route, params.arguments, caller, task_id, progress=False, trace_id=trace_of(ctx.params))
    except (InvalidArgumentsError, PayloadTooLargeError) as exc:
        await store.delete(task_id, caller.client_id or "")
        return text_result(f"{type(exc).__name__}: {exc}", is_error=True).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
    except AgentfulError as exc:
        await store.delete(task_id, caller.client_id or "")
        code = types.INTERNAL_ERROR if isinstance(exc, BrokerUnavailableError) else types.INVALID_PARAMS
        raise MCPError(code, f"{type(exc).__name__}: {exc}") from exc
    return {"task": task}


async def _owned(gw: GatewayContext, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
    caller = gw.caller(ctx)
    record = await gw.require_store().get(task_id)
    if record is None or (gw.auth_enabled and record.get("owner") != (caller.client_id or "")):
        raise MCPError(types.INVALID_PARAMS, f"Unknown task: {task_id!r} (expired, or not yours)")
    return record


async def tasks_get(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams
) -> Any:
    record = await _owned(gw, ctx, params.task_id)
    return await gw.require_store().describe(params.task_id, record)


async def tasks_list(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> Any:
    caller = gw.caller(ctx)
    owner = caller.client_id or "" if gw.auth_enabled else None
    cursor = params.cursor if params is not None else None
    try:
        return await gw.require_store().list(owner, cursor)
    except ValueError:
        raise MCPError(types.INVALID_PARAMS, f"Invalid cursor: {cursor!r}") from None


async def tasks_cancel(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.CancelTaskRequestParams
) -> Any:
    record = await _owned(gw, ctx, params.task_id)
    store = gw.require_store()
    current = await store.describe(params.task_id, record)
    if current["status"] in TERMINAL:
        raise MCPError(
            types.INVALID_PARAMS, f"Cannot cancel task {params.task_id!r}: it is already {current['status']}"
        )
    await asyncio.to_thread(cancel_call, params.task_id)
    await store.mark_cancelled(params.task_id)
    return await store.describe(params.task_id, await store.get(params.task_id) or record)


async def tasks_result(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.GetTaskPayloadRequestParams
) -> Any:
    """Waits for the end, then the CallToolResult with the related-task `_meta`."""
    record = await _owned(gw, ctx, params.task_id)
    store = gw.require_store()
    waiter = gw.require_waiter()
    await waiter.expect(params.task_id)
    try:
        meta = await waiter.fetch(params.task_id)
        status = task_status(meta, record)
        if status not in TERMINAL:
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
