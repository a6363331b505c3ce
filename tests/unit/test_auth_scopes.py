"""The scope grammar and what scopes allow (gateway/auth/scopes.py): tables, pure."""

from __future__ import annotations

import pytest

from gateway.auth.scopes import grant, may_call, may_use, needed_scope, parse_scope, scopes_for_roles
from tasks.config_gateway import check_scope


@pytest.mark.parametrize(
    ("scope", "parsed"),
    [
        ("tools:call:*", ("tools:call", "*", "*")),
        ("tools:call:*/*", ("tools:call", "*", "*")),
        ("tools:call:git/*", ("tools:call", "git", "*")),
        ("tools:call:git/git_status", ("tools:call", "git", "git_status")),
        ("tools:call:*/echo", ("tools:call", "*", "echo")),
        ("resources:read:files/file:///tmp/a.txt", ("resources:read", "files", "file:///tmp/a.txt")),
        ("prompts:get:everything/simple", ("prompts:get", "everything", "simple")),
        ("tools:call:git", None),  # a server needs /* to mean all its tools
        ("tools:call:", None),
        ("tools:call:git/", None),
        ("tools:call:git/git_*", None),  # no partial wildcards
        ("tools:call:g*t/x", None),
        ("tools:list:git/*", None),
        ("tools:call:bad name/x", None),
        ("openid", None),
        ("", None),
    ],
)
def test_grammar(scope: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_scope(scope) == parsed
    if parsed is None:
        with pytest.raises(ValueError, match="is not a scope"):
            check_scope(scope)
    else:
        assert check_scope(scope) == scope


@pytest.mark.parametrize(
    ("scopes", "server", "tool", "allowed"),
    [
        (["tools:call:*"], "git", "git_status", True),
        (["tools:call:git/*"], "git", "git_status", True),
        (["tools:call:git/*"], "time", "get_current_time", False),
        (["tools:call:git/git_status"], "git", "git_status", True),
        (["tools:call:git/git_status"], "git", "git_commit", False),
        (["tools:call:*/echo"], "everything", "echo", True),
        (["tools:call:*/echo"], "everything", "add", False),
        (["resources:read:*"], "git", "git_status", False),  # another kind grants nothing here
        (["openid", "profile"], "git", "git_status", False),
        ([], "git", "git_status", False),
        (["tools:call:gi/*"], "git", "x", False),  # no prefix matching
        (["tools:call:git/git"], "git", "git_status", False),
    ],
)
def test_may_call(scopes: list[str], server: str, tool: str, allowed: bool) -> None:
    assert may_call(scopes, server, tool) is allowed


def test_may_use_kinds() -> None:
    assert may_use(["resources:read:files/*"], "resources:read", "files", "file:///a")
    assert not may_use(["resources:read:files/*"], "prompts:get", "files", "p")
    assert may_use(["prompts:get:*/greet"], "prompts:get", "any", "greet")
    assert needed_scope("tools:call", "git", "git_log") == "tools:call:git/git_log"


def test_roles_to_scopes_and_grants() -> None:
    roles = {
        "reader": ["tools:call:time/*", "tools:call:git/git_status"],
        "ops": ["tools:call:*", "tools:call:time/*"],
    }
    assert scopes_for_roles(["reader", "ops"], roles) == [
        "tools:call:time/*",
        "tools:call:git/git_status",
        "tools:call:*",
    ]
    assert scopes_for_roles(["nobody"], roles) == []
    allowed = scopes_for_roles(["reader"], roles)
    assert grant(None, allowed) == allowed  # no scope asked: everything the client has
    assert grant(["tools:call:time/*"], allowed) == ["tools:call:time/*"]
    assert grant(["tools:call:*", "tools:call:time/*"], allowed) == ["tools:call:time/*"]  # partial grant
    assert grant(["tools:call:*"], allowed) == []
    assert grant(["tools:call:time/get_current_time", "tools:call:git/git_log"], allowed) == [
        "tools:call:time/get_current_time"  # narrower than time/*: granted; git_log: not
    ]
    assert grant(["tools:call:*/echo", "tools:call:git/*"], ["tools:call:*"]) == [
        "tools:call:*/echo",
        "tools:call:git/*",
    ]
    assert grant(["resources:read:git/*"], ["tools:call:*"]) == []
    assert grant(["tools:call:*"], ["tools:call:*/*"]) == ["tools:call:*"]
