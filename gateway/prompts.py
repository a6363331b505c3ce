"""prompts/list, prompts/get and completion/complete.

Prompts are namespaced like tools (`<server><separator><prompt>`, and bare for the default
server); listing asks every server (one `list_prompts` task each) and rebuilds the name index.
completion/complete goes to the server that owns the prompt or resource template it names
(one `complete` task); a server without the completions capability answers no values.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from gateway.callers import may_use
from gateway.calls import MAX_WAIT_S, RECHECK_S
from gateway.context import GatewayContext
from gateway.naming import Route, names_for
from gateway.remote import fan_out, run_task

log = logging.getLogger(__name__)


async def list_prompts(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    caller = gw.caller(ctx)
    answers = await fan_out(gw.require_waiter(), "list_prompts", await gw.served_servers())
    specs: dict[tuple[str, str], dict[str, Any]] = {}
    for server, answer in sorted(answers.items()):
        if gw.separator in server:
            continue
        for prompt in answer.get("prompts") or []:
            specs[(server, str(prompt.get("name", "")))] = prompt
    names, skipped = names_for(specs, gw.separator, gw.default_server)
    for why in skipped:
        log.warning("gateway prompts: %s", why)
    gw.prompt_routes, gw.prompts_at = names, time.monotonic()
    prompts = [
        {**specs[(route.server, route.name)], "name": name}
        for name, route in names.items()
        if may_use(caller, "prompts:get", route.server, route.name)
    ]
    return types.ListPromptsResult.model_validate({"prompts": prompts}, by_name=False)


async def prompt_route(gw: GatewayContext, ctx: ServerRequestContext[Any, Any], name: str) -> Route:
    """The (server, prompt) an exposed prompt name stands for, scopes checked."""
    route = gw.prompt_routes.get(name)
    if route is None and time.monotonic() - gw.prompts_at > RECHECK_S:
        await list_prompts(gw, ctx, None)
        route = gw.prompt_routes.get(name)
    if route is None:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name!r} (see prompts/list)")
    if not may_use(gw.caller(ctx), "prompts:get", route.server, route.name):
        raise MCPError(types.INVALID_REQUEST, f"insufficient_scope: prompt {route.server}/{route.name}")
    return route


async def get_prompt(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
) -> types.GetPromptResult:
    route = await prompt_route(gw, ctx, params.name)
    answer = await run_task(
        gw.require_waiter(), "get_prompt", (route.server, route.name, params.arguments or {}), MAX_WAIT_S
    )
    answer = {k: v for k, v in dict(answer).items() if v is not None}
    return types.GetPromptResult.model_validate(answer, by_name=False)


async def complete(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
) -> types.CompleteResult:
    """completion/complete, forwarded to the server owning the prompt or resource template."""
    from gateway.resources import server_of

    ref = params.ref
    if isinstance(ref, types.PromptReference):
        route = await prompt_route(gw, ctx, ref.name)
        server, wire_ref = route.server, {"type": "ref/prompt", "name": route.name}
    else:
        server, wire_ref = await server_of(gw, ctx, ref.uri), {"type": "ref/resource", "uri": ref.uri}
    argument = params.argument.model_dump(mode="json", by_alias=True, exclude_none=True)
    context = params.context.arguments if params.context is not None else None
    answer = await run_task(
        gw.require_waiter(), "complete", (server, wire_ref, argument, context), MAX_WAIT_S
    )
    return types.CompleteResult.model_validate(answer, by_name=False)
