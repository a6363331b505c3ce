"""resources/list, resources/templates/list, resources/read, resources/subscribe, unsubscribe.

Listing asks every server of the catalog (one `list_resources` task each, concurrently);
resources keep their URIs and the gateway remembers which servers listed each, so a read goes
to the server that offers the URI (see `owners`).

Subscriptions (2025-11-25 sessions): the cluster's workers share one session per server among
all callers and do not relay a server's notifications/resources/updated, so the gateway does
not forward a subscription to the server. It honours one itself: it reads every subscribed URI
every `POLL_S` (one `read_resource` task per URI, however many sessions subscribed) and sends
notifications/resources/updated to the subscribed sessions when the contents changed since the
last read (the first read happens at subscribe time: a URI that cannot be read is refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.callers import may_use, raw_meta
from gateway.calls import MAX_WAIT_S, RECHECK_S
from gateway.context import GatewayContext, Subscription
from gateway.remote import fan_out, run_task

log = logging.getLogger(__name__)

SERVER_META_KEY = "agentful/server"  # resources/read: which server, when several offer the URI
# How often subscribed resources are re-read to find changes.
POLL_S = 5.0


async def listing(gw: GatewayContext, ctx: ServerRequestContext[Any, Any]) -> tuple[list[Any], list[Any]]:
    """Every server's resources (those the caller may read) and templates; remembers owners."""
    caller = gw.caller(ctx)
    answers = await fan_out(gw.require_waiter(), "list_resources", await gw.served_servers())
    owners: dict[str, list[str]] = {}
    templates: dict[str, list[str]] = {}
    resources: list[Any] = []
    found_templates: list[Any] = []
    for server, answer in answers.items():
        for res in answer.get("resources") or []:
            uri = str(res.get("uri", ""))
            if not may_use(caller, "resources:read", server, uri):
                continue
            if uri not in owners:
                resources.append(res)
            owners.setdefault(uri, []).append(server)
        for tmpl in answer.get("resource_templates") or []:
            pattern = str(tmpl.get("uriTemplate", ""))
            if pattern not in templates:
                found_templates.append(tmpl)
            templates.setdefault(pattern, []).append(server)
    routes = gw.resource_routes
    routes.owners, routes.templates, routes.listed_at = owners, templates, time.monotonic()
    return resources, found_templates


async def list_resources(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    resources, _ = await listing(gw, ctx)
    return types.ListResourcesResult.model_validate({"resources": resources}, by_name=False)


async def list_resource_templates(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    _, templates = await listing(gw, ctx)
    return types.ListResourceTemplatesResult.model_validate({"resourceTemplates": templates}, by_name=False)


async def server_of(gw: GatewayContext, ctx: ServerRequestContext[Any, Any], uri: str) -> str:
    """The one server a request about `uri` goes to (see docs/gateway.md), scopes checked."""
    routes = gw.resource_routes
    owners = routes.owners_of(uri)
    if not owners and time.monotonic() - routes.listed_at > RECHECK_S:
        await listing(gw, ctx)
        owners = routes.owners_of(uri)
    if not owners and gw.default_server is not None:
        owners = [gw.default_server]
    chosen = raw_meta(ctx.params).get(SERVER_META_KEY)
    if isinstance(chosen, str) and chosen in owners:
        owners = [chosen]  # the client picked one of the servers that offer it
    elif len(owners) > 1 and gw.default_server in owners:
        owners = [str(gw.default_server)]
    if not owners:
        raise MCPError(types.INVALID_PARAMS, f"Unknown resource: {uri!r} (no server of the cluster lists it)")
    if len(owners) > 1:
        raise MCPError(
            types.INVALID_PARAMS,
            f"Ambiguous resource: {uri!r} is offered by servers {' and '.join(owners)}; "
            f'name one in _meta["{SERVER_META_KEY}"]',
        )
    server = owners[0]
    if not may_use(gw.caller(ctx), "resources:read", server, uri):
        raise MCPError(types.INVALID_REQUEST, f"insufficient_scope: reading {uri!r} of {server}")
    return server


async def read_resource(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    uri = str(params.uri)
    server = await server_of(gw, ctx, uri)
    answer = await run_task(gw.require_waiter(), "read_resource", (server, uri), MAX_WAIT_S)
    return types.ReadResourceResult.model_validate(answer, by_name=False)


def _digest(answer: Any) -> str:
    return hashlib.sha256(json.dumps(answer, sort_keys=True, default=str).encode()).hexdigest()


async def subscribe(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
) -> types.EmptyResult:
    """resources/subscribe: the URI must be readable now; changes are found by polling."""
    uri = str(params.uri)
    connection = getattr(ctx.session, "_connection", None)  # the SDK keeps it private
    if connection is None or connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(types.INVALID_REQUEST, "resources/subscribe needs a 2025-11-25 session")
    server = await server_of(gw, ctx, uri)
    subscription = gw.resource_routes.subscriptions.get(uri)
    if subscription is None or subscription.server != server:
        answer = await run_task(gw.require_waiter(), "read_resource", (server, uri), MAX_WAIT_S)
        subscription = gw.resource_routes.subscriptions.setdefault(uri, Subscription(server, _digest(answer)))
    subscription.connections.add(connection)
    return types.EmptyResult()


async def unsubscribe(
    gw: GatewayContext, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
) -> types.EmptyResult:
    """resources/unsubscribe: idempotent (an URI this session did not subscribe to is fine)."""
    uri = str(params.uri)
    subscription = gw.resource_routes.subscriptions.get(uri)
    connection = getattr(ctx.session, "_connection", None)
    if subscription is not None and connection is not None:
        subscription.connections.discard(connection)
        if not subscription.connections:
            gw.resource_routes.subscriptions.pop(uri, None)
    return types.EmptyResult()


async def poll_subscriptions(gw: GatewayContext) -> None:
    """Re-read every subscribed URI once; tell its sessions when the contents changed."""
    subscriptions = gw.resource_routes.subscriptions
    for uri, subscription in list(subscriptions.items()):
        if not subscription.connections:
            subscriptions.pop(uri, None)
            continue
        try:
            answer = await run_task(
                gw.require_waiter(), "read_resource", (subscription.server, uri), MAX_WAIT_S
            )
        except MCPError as exc:
            log.info("subscribed resource %s not read: %s", uri, exc.error.message)
            continue
        digest = _digest(answer)
        if digest == subscription.digest:
            continue
        subscription.digest = digest
        for connection in list(subscription.connections):
            try:
                await connection.send_resource_updated(uri)
            except Exception as exc:
                log.debug("resources/updated not delivered: %s", exc)
                subscription.connections.discard(connection)


async def poll_forever(gw: GatewayContext) -> None:
    while True:
        await asyncio.sleep(POLL_S)
        try:
            await poll_subscriptions(gw)
        except Exception:
            log.exception("polling subscribed resources failed")
