"""The gateway's names: `<server><separator><tool>`, and the default server's bare names. Pure.

Looking a name up never splits it: the index maps every name the gateway lists to its
(server, tool), so a call can only name what tools/list showed. Two pairs that would get the
same name (a server name that ends like the separator, a bare name of the default server that
equals a namespaced one) are found when the index is built: the namespaced name wins over a
bare one, and two namespaced pairs that collide are both left out, with a warning. The config
file already rejects a configured server name that contains the separator.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tasks.catalog import ServerTools, ToolSpec


@dataclass(frozen=True)
class Route:
    """What an exposed name stands for."""

    server: str
    name: str  # the server's own name for it


@dataclass(frozen=True)
class Index:
    """Exposed tool name -> (server, spec), in listing order; and what was left out, and why."""

    tools: dict[str, tuple[Route, ToolSpec]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    fingerprint: str = ""

    def route(self, name: str) -> tuple[Route, ToolSpec] | None:
        return self.tools.get(name)


def exposed(server: str, name: str, separator: str) -> str:
    return f"{server}{separator}{name}"


def names_for(
    pairs: Iterable[tuple[str, str]], separator: str, default_server: str | None
) -> tuple[dict[str, Route], list[str]]:
    """Exposed name -> Route for (server, name) pairs; and warnings for what was left out."""
    namespaced: dict[str, list[Route]] = {}
    bare: dict[str, Route] = {}
    for server, name in pairs:
        route = Route(server, name)
        namespaced.setdefault(exposed(server, name, separator), []).append(route)
        if server == default_server:
            bare[name] = route
    out: dict[str, Route] = {}
    skipped: list[str] = []
    for key, routes in namespaced.items():
        if len(routes) > 1:
            which = ", ".join(f"{r.server}/{r.name}" for r in routes)
            skipped.append(f"{key!r} left out: it would name {which} (ambiguous)")
        else:
            out[key] = routes[0]
    for key, route in bare.items():
        if key in namespaced:
            skipped.append(
                f"bare {key!r} of default server {route.server!r} left out: a namespaced name wins"
            )
        else:
            out[key] = route
    return out, skipped


def build_index(catalog: Mapping[str, ServerTools], separator: str, default_server: str | None) -> Index:
    """The tool index of a catalog (servers whose name contains the separator are left out)."""
    skipped: list[str] = []
    pairs: list[tuple[str, str]] = []
    specs: dict[tuple[str, str], ToolSpec] = {}
    for server in sorted(catalog):
        if separator in server:
            skipped.append(f"server {server!r} left out: its name contains the separator {separator!r}")
            continue
        for name, spec in catalog[server].tools.items():
            pairs.append((server, name))
            specs[(server, name)] = spec
    names, more = names_for(pairs, separator, default_server)
    tools = {key: (route, specs[(route.server, route.name)]) for key, route in names.items()}
    digest = hashlib.sha256(
        json.dumps(
            [[k, r.server, s.to_json()] for k, (r, s) in tools.items()], sort_keys=True, default=str
        ).encode()
    ).hexdigest()
    return Index(tools, tuple(skipped + more), digest)
