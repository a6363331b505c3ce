"""What the gateway tells clients unasked: list changes, and the log level they asked for.

- list_changed: 2026-07-28 clients get `ToolsListChanged` (and the prompts, resources ones) on
  their subscriptions/listen streams; 2025-11-25 sessions with a standalone stream (stdio, or
  the HTTP GET stream) get notifications/tools/list_changed (and the others) there.
- logging/setLevel (2025-11-25): accepted and remembered per session: the level at which a
  `relay` server's log messages reach the session's client (gateway/relay.py).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

log = logging.getLogger(__name__)


class Clients:
    """The connections the gateway can notify, and each one's log level."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)  # serves subscriptions/listen (2026-07-28)
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.log_levels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def seen(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Remember a request's connection when it is a 2025-11-25 one with a standalone stream."""
        connection = getattr(ctx.session, "_connection", None)  # the SDK keeps it private
        if (
            connection is not None
            and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
            and connection.has_standalone_channel
        ):
            self._connections.add(connection)

    async def lists_changed(self) -> None:
        """Tell every client the tool (and prompt, resource) lists changed."""
        for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
            await self.bus.publish(event)  # 2026-07-28 clients: subscriptions/listen streams
        for connection in list(self._connections):  # 2025-11-25 clients: their standalone stream
            try:
                await connection.send_tool_list_changed()
                await connection.send_prompt_list_changed()
                await connection.send_resource_list_changed()
            except Exception as exc:
                log.debug("list_changed not delivered to a connection: %s", exc)
                self._connections.discard(connection)

    async def set_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """logging/setLevel: remembered for the session (see the module docstring)."""
        connection = getattr(ctx.session, "_connection", None)
        if connection is not None:
            self.log_levels[connection] = params.level
        return types.EmptyResult()

    def close(self) -> None:
        self.listen.close()
