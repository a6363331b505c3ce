"""Which servers, tools, resources and prompts a caller may use: roles -> scopes -> names.

A scope is `<kind>:<server>/<name>` with `<kind>` one of tools:call, resources:read,
prompts:get; `<server>` and `<name>` are each a name or `*`, and `<kind>:*` is `<kind>:*/*`.
So `tools:call:git/*` is every tool of server git, `tools:call:*/echo` the tool echo of any
server, `tools:call:git/git_status` one tool. Nothing else matches: no partial wildcards, no
implied scopes. The grammar itself is `tasks.config_file.SCOPE_PATTERN`, so a config file is
checked without importing the gateway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from tasks.config_gateway import SCOPE_PATTERN

Kind = Literal["tools:call", "resources:read", "prompts:get"]


def parse_scope(scope: str) -> tuple[str, str, str] | None:
    """(kind, server, name) of a scope, `*` for a wildcard; None if it is not one of ours
    (an external issuer's `openid` or `email` scopes are simply not ours, not an error)."""
    m = SCOPE_PATTERN.match(scope)
    if m is None:
        return None
    if m["all"]:
        return m["kind"], "*", "*"
    return m["kind"], m["server"], m["name"]


def may_use(scopes: Iterable[str], kind: Kind, server: str, name: str) -> bool:
    """True if one of `scopes` grants `kind` on `server`'s `name`."""
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None or parsed[0] != kind:
            continue
        _, s, n = parsed
        if s in ("*", server) and n in ("*", name):
            return True
    return False


def may_call(scopes: Iterable[str], server: str, tool: str) -> bool:
    """True if `scopes` allow calling `tool` of `server` (and so listing it)."""
    return may_use(scopes, "tools:call", server, tool)


def needed_scope(kind: Kind, server: str, name: str) -> str:
    """The narrowest scope that grants this: what a 403 names in its `scope` challenge."""
    return f"{kind}:{server}/{name}"


def scopes_for_roles(roles: Iterable[str], role_scopes: Mapping[str, Iterable[str]]) -> list[str]:
    """The scopes of these roles, in the config's order, without repeats; unknown roles give none."""
    out: dict[str, None] = {}
    for role in roles:
        for scope in role_scopes.get(role, ()):
            out[scope] = None
    return list(out)


def covers(wide: str, narrow: str) -> bool:
    """True if scope `wide` grants everything `narrow` does (`tools:call:*` covers `tools:call:git/x`)."""
    w, n = parse_scope(wide), parse_scope(narrow)
    if w is None or n is None or w[0] != n[0]:
        return False
    return w[1] in ("*", n[1]) and w[2] in ("*", n[2])


def grant(requested: Iterable[str] | None, allowed: Iterable[str]) -> list[str]:
    """What a token request gets: all `allowed` scopes if it asked for none, else the requested
    ones that an allowed scope covers, so a client may ask for less than its roles give (RFC 6749
    3.3 lets the server grant less than asked; the response says what it granted)."""
    allowed_list = list(dict.fromkeys(allowed))
    if requested is None:
        return allowed_list
    return [s for s in dict.fromkeys(requested) if any(covers(a, s) for a in allowed_list)]
