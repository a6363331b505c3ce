"""What the handler modules (calls, mcptask_handlers, resources, prompts) need of the Gateway.

gateway/server.py builds the Gateway and imports the handler modules to wire each MCP method
to them; they take the Gateway as `gw: GatewayContext`, this Protocol, and so do not import
gateway/server.py back. The resource routes, part of the Gateway's state that the resource
handlers keep, live here for the same reason.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import mcp_types as types
    from mcp.server.context import ServerRequestContext

    from gateway.callers import Caller
    from gateway.coalesce import Coalescer
    from gateway.mcptasks import TaskStore
    from gateway.naming import Index, Route
    from gateway.results import ResultWaiter
    from tasks.config_gateway import GatewaySection
    from tasks.relay import RelayWish


@dataclass
class Subscription:
    server: str
    digest: str  # of the contents last read
    connections: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)


@dataclass
class ResourceRoutes:
    """Which servers listed each URI and each template, from the last listing; subscriptions."""

    owners: dict[str, list[str]] = field(default_factory=dict)
    templates: dict[str, list[str]] = field(default_factory=dict)
    listed_at: float = float("-inf")
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def owners_of(self, uri: str) -> list[str]:
        """Servers that listed `uri`, else those whose template's literal prefix matches it."""
        owners = self.owners.get(uri)
        if owners:
            return owners
        matches: set[str] = set()
        for pattern, servers in self.templates.items():
            prefix = pattern.split("{", 1)[0]
            if prefix and uri.startswith(prefix):
                matches.update(servers)
        return sorted(matches)


class GatewayContext(Protocol):
    """The Gateway (gateway/server.py) as its handlers see it: its state and what they call."""

    section: GatewaySection
    separator: str
    default_server: str | None
    auth_enabled: bool
    index: Index  # tools: exposed name -> (server, spec), of the servers a worker runs
    catalog_index: Index  # the same for every server of the catalog
    tools_cache: list[types.Tool] | None
    refreshed_at: float
    served: set[str] | None  # servers a live worker runs (None: unknown)
    prompt_routes: dict[str, Route]  # exposed prompt name -> (server, prompt)
    prompts_at: float
    resource_routes: ResourceRoutes
    coalescer: Coalescer  # tools/call requests that arrive together travel as one batch

    async def refresh(self) -> bool: ...

    async def served_servers(self) -> list[str]: ...

    async def serves(self, server: str) -> bool: ...

    def caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller: ...

    def require_waiter(self) -> ResultWaiter: ...

    def relay_wish(self, ctx: ServerRequestContext[Any, Any], server: str) -> RelayWish | None: ...

    def require_store(self) -> TaskStore: ...

    def record(
        self, caller: Caller, route: Route, outcome: str, started: float, trace_id: str, error: object = None
    ) -> None: ...
