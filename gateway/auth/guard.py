"""403 `insufficient_scope` for a call the caller's token does not allow (MCP authorization,
"scope challenge"; RFC 6750 3.1), before the call reaches the MCP layer.

The SDK's own RequireAuthMiddleware answers 401 for a missing or bad token and 403 only for
scopes required of every request; which tool a request calls is in its JSON-RPC body. So this
ASGI wrapper sits inside it (the token is verified, `scope["user"]` is set), reads the body of a
POST, and refuses a `tools/call` whose tool the token's scopes do not grant, naming the scope
that would (the SDK's client uses it to step up). Everything else passes through with the body
replayed unchanged; a body that is not JSON is the MCP layer's to refuse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.scopes import may_call, needed_scope

log = logging.getLogger(__name__)

# Exposed tool name -> (server, the server's tool name), or None if the gateway has no such tool.
ToolResolver = Callable[[str], tuple[str, str] | None]


def forbidden_calls(body: bytes, scopes: list[str], resolve: ToolResolver) -> list[str]:
    """The scopes that the tools/call requests in this body lack (empty: allowed). Pure."""
    if b"tools/call" not in body:
        return []
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    messages = payload if isinstance(payload, list) else [payload]
    missing: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("method") != "tools/call":
            continue
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            continue
        target = resolve(name)
        if target is None:
            continue  # unknown tool: the MCP layer says so
        server, tool = target
        if not may_call(scopes, server, tool):
            missing.append(needed_scope("tools:call", server, tool))
    return missing


class ScopeGuard:
    def __init__(
        self, app: ASGIApp, resolve: ToolResolver, *, resource_metadata_url: str | None = None
    ) -> None:
        self.app, self.resolve, self.resource_metadata_url = app, resolve, resource_metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not isinstance(user, AuthenticatedUser)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        missing = forbidden_calls(body, list(user.scopes), self.resolve)
        if missing:
            log.info("call refused: client %s lacks %s", user.access_token.client_id, " ".join(missing))
            await _insufficient_scope(send, missing, self.resource_metadata_url)
            return
        await self.app(scope, replay([body], None, receive), send)


def replay(bodies: list[bytes], first: Message | None, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    if first is not None:
        pending.append(first)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _insufficient_scope(send: Send, missing: list[str], resource_metadata_url: str | None) -> None:
    scope_text = " ".join(missing)
    description = f"this token does not grant {scope_text}"
    parts = ['error="insufficient_scope"', f'scope="{scope_text}"', f'error_description="{description}"']
    if resource_metadata_url:
        parts.append(f'resource_metadata="{resource_metadata_url}"')
    body = json.dumps({"error": "insufficient_scope", "error_description": description, "scope": scope_text})
    payload = body.encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"www-authenticate", ("Bearer " + ", ".join(parts)).encode()),
    ]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def install_scope_guard(app: Any, path: str, resolve: ToolResolver) -> bool:
    """Wrap the MCP endpoint of an app made by the SDK's `streamable_http_app(auth=...)`: its
    route at `path` holds a RequireAuthMiddleware whose `.app` is the MCP handler. True if found."""
    from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware

    for route in getattr(app, "routes", []):
        inner = getattr(route, "app", None)
        if getattr(route, "path", None) == path and isinstance(inner, RequireAuthMiddleware):
            url = inner.resource_metadata_url
            inner.app = ScopeGuard(inner.app, resolve, resource_metadata_url=str(url) if url else None)
            return True
    return False
