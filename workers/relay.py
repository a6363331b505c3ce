"""A `relay: true` server's session side (tasks/relay.py has the channel): the MCP client
callbacks that take the server's sampling and elicitation requests and its log messages, and
hand each to the caller of the call in flight.

Why calls run one at a time on such a session: over stdio (and on a shared HTTP session) a
server's request carries nothing that says which tool call it belongs to (the SDK's
`related_request_id` is transport routing, never on the wire), so with two calls in flight a
question could reach the wrong caller, and one caller's log lines another's screen. One at a
time, the call in flight is the one asking. `perProject` sessions keep projects in parallel.

Why protocol 2025-11-25 (`mode="legacy"`): on 2026-07-28 a server has no back channel for its
own requests over stdio, and sampling and logging are deprecated there (SEP-2577).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import mcp_types as types

from tasks import relay
from tasks.progress import publish_event
from tasks.redisconn import connect
from tasks.relay import RelayTarget

log = logging.getLogger(__name__)


class SessionRelay:
    """The callbacks of one session, and the call they answer for."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.lock = anyio.Lock()  # one call at a time: see the module
        self._sending = anyio.Lock()  # log lines leave in the order they came (a FIFO lock)
        self.current: RelayTarget | None = None

    def client_options(self) -> dict[str, Any]:
        return {
            "mode": "legacy",
            "sampling_callback": self.sampling,
            "elicitation_callback": self.elicitation,
            "logging_callback": self.logging,
        }

    async def connected(self, client: Any) -> None:
        """A new connection: ask for every log line (`logging/setLevel` debug, if the server logs);
        each call's caller gets those at its own level and above (`logging`)."""
        try:
            if client.server_capabilities.logging is not None:
                await client.set_logging_level("debug")
        except Exception as exc:  # a server that refuses the level still serves its tools
            log.info("MCP server %s: logging/setLevel refused: %s", self.server, exc)

    async def drained(self) -> None:
        """Once the call has its result: every log line it caused is published (so a caller that
        stops listening at the result has them all, as with progress)."""
        await anyio.sleep(0)  # the callback tasks of the last notifications start and queue up
        async with self._sending:
            pass

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        result = await self._ask("sampling/createMessage", params, "sampling")
        if isinstance(result, types.ErrorData):
            return result
        return types.CreateMessageResult.model_validate(result)

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> Any:
        result = await self._ask("elicitation/create", params, "elicitation")
        return result if isinstance(result, types.ErrorData) else types.ElicitResult.model_validate(result)

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        target = self.current
        floor = target.wish.log_level if target is not None else None
        if target is None or floor is None or not relay.level_at_least(str(params.level), floor):
            return
        event = relay.log_event(str(params.level), params.data, params.logger)
        async with self._sending:  # the SDK starts one callback task per notification, in order
            await anyio.to_thread.run_sync(_publish, target, event)

    async def _ask(self, method: str, params: Any, what: str) -> dict[str, Any] | types.ErrorData:
        target = self.current
        if target is None or not getattr(target.wish, what):
            why = f"{method}: the caller of this call cannot answer it (it did not offer {what})"
            return _error(why, types.INVALID_REQUEST)
        reply = relay.new_reply_key(target.task_id)
        body = params.model_dump(by_alias=True, mode="json", exclude_none=True)
        event = relay.ask_event(method, body, reply)
        try:
            listeners = await anyio.to_thread.run_sync(_publish, target, event)
            if not listeners:
                raise LookupError("nobody is listening on the call's channel")
            answer = await anyio.to_thread.run_sync(_wait, target, reply)
        except Exception as exc:
            log.info("call %s: %s not relayed: %s", target.task_id, method, exc)
            return _error(f"{method} could not reach the caller: {exc}")
        if answer is None:
            return _error(f"{method}: the caller did not answer within {target.wish.wait_s:g} s")
        error = answer.get("error")
        if isinstance(error, dict):
            return _error(str(error.get("message")), int(error.get("code", types.INTERNAL_ERROR)))
        result = answer.get("result")
        if not isinstance(result, dict):
            return _error(f"{method}: the caller's answer has no result")
        return result


def _error(message: str, code: int = types.INTERNAL_ERROR) -> types.ErrorData:
    return types.ErrorData(code=code, message=message)


def _publish(target: RelayTarget, event: str) -> int:
    return publish_event(target.url, target.task_id, event)


_waiters: dict[str, Any] = {}


def _wait(target: RelayTarget, reply: str) -> dict[str, Any] | None:
    """The caller's answer (BLPOP on its reply key), or None after the call's wait. Its own
    client: a blocking read must not meet the 5 s socket timeout of the publishing one."""

    client = _waiters.get(target.url)
    if client is None:
        client = _waiters[target.url] = connect(target.url, socket_connect_timeout=3)
    got = client.blpop([reply], timeout=max(1, int(target.wish.wait_s)))
    if got is None:
        return None
    answer = json.loads(got[1])
    return answer if isinstance(answer, dict) else None
