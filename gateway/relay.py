"""The gateway's half of the relay (tasks/relay.py): a `relay: true` server's sampling and
elicitation requests and log messages, asked or told during a `tools/call`, reach the MCP client
that made the call, and its answers go back to the worker.

- What a client can answer: sampling and elicitation when it declared the capability and this
  request can carry a server request back (2025-11-25 sessions; a 2026-07-28 request has no back
  channel); log messages at the level it set with `logging/setLevel` (2025-11-25, `info` until it
  sets one) or opted in to with `_meta["io.modelcontextprotocol/logLevel"]` (2026-07-28).
- Such a call is answered as SSE (gateway/streaming.py), so its questions and log lines can ride
  the response stream of the request, as the spec wants.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

from tasks import relay

log = logging.getLogger(__name__)
LOG_LEVEL_META = "io.modelcontextprotocol/logLevel"
_REQUESTS: dict[str, tuple[Any, Any]] = {  # method -> (request type, result type)
    "sampling/createMessage": (types.CreateMessageRequest, types.CreateMessageResult),
    "elicitation/create": (types.ElicitRequest, types.ElicitResult),
}
Push = Callable[[str, str], Awaitable[None]]


def wish_of(
    ctx: ServerRequestContext[Any, Any], session_level: str | None, meta: Mapping[str, Any]
) -> relay.RelayWish:
    """What the client of this request can answer (see the module)."""
    caps = ctx.session.client_capabilities
    back = bool(getattr(ctx.session, "can_send_request", False))
    sampling = back and caps is not None and caps.sampling is not None
    elicitation = back and caps is not None and caps.elicitation is not None
    level = meta.get(LOG_LEVEL_META)
    if not isinstance(level, str) or level not in relay.LEVELS:
        level = session_level if back else None
    return relay.RelayWish(sampling, elicitation, level)


async def forward(ctx: ServerRequestContext[Any, Any], event: Mapping[str, Any], push: Push) -> None:
    """One relayed event: a log line to the client, or a question asked of it and answered."""
    if event.get("kind") == "log":
        level = event.get("level")
        if level in relay.LEVELS:
            await ctx.session.send_log_message(  # 2025-11-25 clients use it
                level, event.get("data"), event.get("logger"), related_request_id=ctx.request_id
            )
        return
    reply, method = event.get("reply"), event.get("method")
    if not isinstance(reply, str) or not reply.startswith(relay.REPLY_PREFIX) or method not in _REQUESTS:
        return
    request_type, result_type = _REQUESTS[str(method)]
    try:
        request = request_type.model_validate({"method": method, "params": event.get("params") or {}})
        result = await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
        )
        body = relay.answer_body(result.model_dump(by_alias=True, mode="json", exclude_none=True))
    except MCPError as exc:
        body = relay.answer_body(code=exc.code, message=exc.message)
    except Exception as exc:  # the client went away, or sent a result that is not one
        log.info("relayed %s not answered: %s", method, exc)
        body = relay.answer_body(message=f"the client did not answer {method}: {type(exc).__name__}: {exc}")
    await push(reply, body)
