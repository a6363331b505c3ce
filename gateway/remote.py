"""Running the `tasks` API's helper tasks (resources, prompts, completion) from the event loop.

One task per request, its result awaited on the gateway's Redis pub/sub (gateway/results.py),
never with a blocking `AsyncResult.get()`. A worker-side failure becomes a JSON-RPC error: a
permanent one (no such prompt, bad arguments, resource not found) is the request's fault
(`-32602`), anything else the path's (`-32603`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from celery import states, uuid
from mcp.shared.exceptions import MCPError

from gateway.results import ResultWaiter
from tasks.errors import AgentfulError, BrokerUnavailableError, PermanentError

log = logging.getLogger(__name__)

# How long a resources/prompts listing may wait for each server's answer.
LIST_TIMEOUT_S = 15.0


async def run_task(waiter: ResultWaiter, name: str, args: tuple[Any, ...], timeout_s: float) -> Any:
    """Run one of the `tasks` API's Celery tasks (`tasks.<name>`) and wait for its value."""
    import tasks

    task = getattr(tasks, name, None)
    if task is None:
        raise MCPError(types.METHOD_NOT_FOUND, f"this cluster has no {name} task yet")
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
        raise MCPError(types.INTERNAL_ERROR, f"{name}{args!r}: no answer within {timeout_s:.0f} s") from None
    if meta.get("status") != states.SUCCESS:
        failure = exception_of(meta)
        code = types.INVALID_PARAMS if isinstance(failure, PermanentError) else types.INTERNAL_ERROR
        raise MCPError(code, f"{name} on {args[0]}: {type(failure).__name__}: {failure}")
    return meta.get("result")


async def fan_out(waiter: ResultWaiter, name: str, servers: list[str]) -> dict[str, Any]:
    """`name(server)` on every server, concurrently: answers by server; failures are logged."""
    answers = await asyncio.gather(
        *(run_task(waiter, name, (s,), LIST_TIMEOUT_S) for s in servers), return_exceptions=True
    )
    out: dict[str, Any] = {}
    for server, answer in zip(servers, answers, strict=True):
        if isinstance(answer, BaseException):
            log.info("%s(%s) failed: %s", name, server, answer)
        elif isinstance(answer, dict):
            out[server] = answer
    return out


def exception_of(meta: Mapping[str, Any]) -> BaseException:
    """The exception a failed task stored (its Celery meta), as a Python exception."""
    from tasks.app import app

    try:
        exc = app.backend.exception_to_python(meta.get("result"))
    except Exception as error:
        return RuntimeError(f"task failed: {meta.get('result')!r} ({error})")
    return exc if isinstance(exc, BaseException) else RuntimeError(str(exc))
