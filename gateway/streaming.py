"""JSON responses, except for a request that carries a progressToken: that one answers as SSE.

Why this is needed: in JSON-response mode (`jsonResponse: true`, the default, for speed) the
SDK answers each POST with one JSON body, which cannot carry notifications, so a client that
asked for progress (`_meta.progressToken`) would get none. SSE for every request costs every
call; so the mode is decided per request instead.

The seam: the SDK reads its response mode from exactly two attributes, per request:
`StreamableHTTPSessionManager.json_response` (2026-07-28 requests: `handle_modern_request`,
which on the SSE path still answers plain JSON when the handler sends nothing) and
`StreamableHTTPServerTransport.is_json_response_enabled` (2025-11-25 sessions: the Accept
check, the POST's response branch, and the session's message router, which drops
notifications related to a request in JSON mode). Both become properties that read a context
variable set by `choose()` for the request being served (gateway/jsonrpc.py calls it with the
body it already parsed). The SDK builds the manager and the transports itself, with no factory
hook, so `install` and `_admit_session` give the objects these subclasses after construction.

The message router runs in the session's own task, not the request's: there the variable is
unset (`connect` clears it) and related notifications are kept while any SSE request of the
session is open. The gateway sends request-related notifications (progress) only for requests
with a progressToken, i.e. the ones answered as SSE, so a JSON request never receives one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Scope

# True: answer this request as SSE; False: as the configured mode; None: not in a request.
_SSE: ContextVar[bool | None] = ContextVar("agentful_gateway_sse", default=None)


def wants_stream(payload: Any, accept: str, also: Callable[[Mapping[str, Any]], bool] | None = None) -> bool:
    """Does this parsed POST body need an SSE answer: one request with a progressToken (or one
    `also` says so of: a call whose server may ask its client questions, gateway/relay.py), from
    a client that accepts text/event-stream? Pure."""
    if not isinstance(payload, Mapping) or "id" not in payload or not isinstance(payload.get("method"), str):
        return False
    params = payload.get("params")
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    progress = isinstance(meta, Mapping) and meta.get("progressToken") is not None
    if not progress and not (also is not None and also(payload)):
        return False
    return any(
        part.split(";")[0].strip() in ("text/event-stream", "text/*", "*/*") for part in accept.split(",")
    )


def choose(payload: Any, scope: Scope, also: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
    """Decide the response mode of the POST being served (in its own context)."""
    accept = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"accept"), "")
    _SSE.set(wants_stream(payload, accept, also))


class PerRequestSessionManager(StreamableHTTPSessionManager):
    """`json_response` as configured, except False while serving a request that wants SSE."""

    _json_default: bool

    @property
    def json_response(self) -> bool:
        return self._json_default and not _SSE.get()

    @json_response.setter
    def json_response(self, value: bool) -> None:
        self._json_default = value

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None:
            _adopt(transport, PerRequestTransport, "is_json_response_enabled")
        return transport


class PerRequestTransport(StreamableHTTPServerTransport):
    """A 2025-11-25 session's transport: JSON per POST, except SSE for a request that wants it."""

    _json_default: bool

    @property
    def is_json_response_enabled(self) -> bool:
        sse = _SSE.get()
        if sse is None:  # the session's message router: keep what an open SSE request needs
            return self._json_default and not self._sse_stream_writers
        return self._json_default and not sse

    @is_json_response_enabled.setter
    def is_json_response_enabled(self, value: bool) -> None:
        self._json_default = value

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        # This runs in the session's task (which copied the opening request's context): clear
        # the request's choice so the message router started below sees None.
        _SSE.set(None)
        async with super().connect() as streams:
            yield streams


def _adopt(obj: Any, cls: type, attribute: str) -> None:
    """Give an SDK-built object its per-request subclass, moving the configured mode over."""
    default = obj.__dict__.pop(attribute)
    obj.__class__ = cls
    obj._json_default = bool(default)


def install(manager: StreamableHTTPSessionManager) -> None:
    """Make the SDK's session manager (from `streamable_http_app`) decide the mode per request."""
    if not isinstance(manager, PerRequestSessionManager):
        _adopt(manager, PerRequestSessionManager, "json_response")
