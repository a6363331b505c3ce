"""Who is calling: the token's client (auth on), its scopes, and the project for affinity.

The project a call belongs to comes from, in this order: the `X-Agentful-Project` header, else
the access token's client id (auth on), else `_meta["agentful/project"]` of the request.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from tasks.telemetry.context import new_trace_id, trace_id_from_meta

PROJECT_HEADER = "x-agentful-project"
PROJECT_META_KEY = "agentful/project"


@dataclass
class Caller:
    """Who is calling: the token's client (auth on) and the project for affinity."""

    client_id: str | None
    scopes: list[str] | None  # None: auth is off, everything is allowed
    project: str | None


def caller_of(ctx: ServerRequestContext[Any, Any], *, auth_enabled: bool) -> Caller:
    """The caller of a request: token (when auth is on) and project, by the documented precedence."""
    client_id: str | None = None
    scopes: list[str] | None = None
    if auth_enabled:
        token = get_access_token()
        if token is None:
            raise MCPError(types.INVALID_REQUEST, "authentication required")
        client_id, scopes = token.client_id, list(token.scopes)
    project: str | None = None
    headers = getattr(ctx.request, "headers", None)
    if headers is not None:
        project = headers.get(PROJECT_HEADER) or None
    if project is None and client_id:
        project = client_id
    if project is None:
        value = raw_meta(ctx.params).get(PROJECT_META_KEY)
        project = str(value) if value not in (None, "") else None
    return Caller(client_id, scopes, project)


def may_call(caller: Caller, server: str, tool: str) -> bool:
    if caller.scopes is None:
        return True
    from gateway.auth.scopes import may_call as allowed

    return bool(allowed(caller.scopes, server, tool))


def may_use(caller: Caller, kind: str, server: str, name: str) -> bool:
    """May the caller use a resource or prompt (`kind`: resources:read, prompts:get)?"""
    if caller.scopes is None:
        return True
    scopes_module = importlib.import_module("gateway.auth.scopes")
    allowed: Callable[..., bool] | None = getattr(scopes_module, "may_use", None)
    return True if allowed is None else bool(allowed(caller.scopes, kind, server, name))


def raw_meta(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The `_meta` object of raw request params (empty when absent or not an object)."""
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def trace_of(params: Mapping[str, Any] | None) -> str:
    """The MCP client's trace id (`_meta` traceparent or agentful/trace_id), else a new one."""
    return trace_id_from_meta(dict(raw_meta(params))) or new_trace_id()
