"""`-32600 Invalid Request` for a POST body that is JSON but not a JSON-RPC 2.0 message we take.

The SDK's Streamable HTTP transport answers a body it cannot validate as a JSON-RPC message
with `-32602` (its pydantic error), where JSON-RPC 2.0 (section 5.1) says `-32600`. This ASGI
wrapper of the MCP endpoint reads a POST body, and when it parses as JSON but is not a JSON-RPC
message, answers 400 with `-32600` naming what is wrong: not an object, no "jsonrpc": "2.0",
an `id` that is neither a string, a number nor null, or a batch (an array: MCP removed JSON-RPC
batching in its 2025-06-18 revision, and neither protocol the gateway speaks has it). JSON
nested deeper than Python's parser goes is `-32700 Parse error` (it was a 500 before). Other
malformed JSON (the SDK's `-32700`) passes through with the body replayed unchanged.

`on_request(payload, scope)`, when given, sees every parsed JSON-RPC body first (in the
request's context): gateway/streaming.py decides the response mode there without parsing the
body a second time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

INVALID_REQUEST = -32600
PARSE_ERROR = -32700


def shape_error(payload: Any) -> str | None:
    """Why `payload` (parsed JSON) is not a JSON-RPC 2.0 message the gateway takes; None if it
    is. Pure."""
    if isinstance(payload, list):
        return "batch requests are not supported (MCP removed JSON-RPC batching in 2025-06-18)"
    msg = payload
    if not isinstance(msg, dict):
        return f"a JSON-RPC message is an object, got {type(msg).__name__}"
    if msg.get("jsonrpc") != "2.0":
        return 'a JSON-RPC 2.0 message has "jsonrpc": "2.0"'
    if "id" in msg and (isinstance(msg["id"], bool) or not isinstance(msg["id"], str | int | float | None)):
        return f'"id" must be a string, a number or null, got {type(msg["id"]).__name__}'
    if "method" in msg:
        if not isinstance(msg["method"], str):
            return '"method" must be a string'
    elif "result" not in msg and "error" not in msg:
        return 'a JSON-RPC message has "method" (request, notification), or "result" or "error"'
    return None


OnRequest = Callable[[Any, Scope], None]


class JsonRpcShapeGuard:
    def __init__(self, app: ASGIApp, on_request: OnRequest | None = None) -> None:
        self.app = app
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        why = None
        code = INVALID_REQUEST
        payload: Any = None
        try:
            payload = json.loads(body)
            why = shape_error(payload)
        except ValueError:
            pass  # not JSON: the SDK's own parse error (-32700)
        except RecursionError:
            why, code = "Parse error: the JSON is nested deeper than the gateway parses", PARSE_ERROR
        if why is not None:
            text = why if code == PARSE_ERROR else f"Invalid Request: {why}"
            payload = json.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        if self.on_request is not None:
            self.on_request(payload, scope)
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def install(app: Any, path: str, on_request: OnRequest | None = None) -> bool:
    """Wrap the MCP endpoint at `path` of an app built by the SDK's `streamable_http_app`, inside
    its RequireAuthMiddleware when auth is on (a request without a token is still a 401)."""
    from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware

    for route in getattr(app, "routes", []):
        if getattr(route, "path", None) != path or not hasattr(route, "app"):
            continue
        if isinstance(route.app, RequireAuthMiddleware):
            route.app.app = JsonRpcShapeGuard(route.app.app, on_request)
        else:
            route.app = JsonRpcShapeGuard(route.app, on_request)
        return True
    return False
