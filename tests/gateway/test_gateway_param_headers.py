"""`Mcp-Param-*` headers (protocol 2026-07-28) are checked against a tools/call's arguments by the
SDK, with the tool's schema from the gateway's own index (`get_tool_input_schema`), not from a
tools/list run per call; a caller the tool is not listed for gets the call's own refusal.

A real worker runs tests/servers/meta_echo.py, whose `region` tool declares its argument as the
`Mcp-Param-Region` header; raw HTTP to the gateway in a thread of this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import META_SERVER, own_worker
from tests.gateway.conftest import RunningGateway, bearer, call, era, rpc, token_for

pytestmark = pytest.mark.integration

TOOL = "meta__region"


@pytest.fixture(scope="module")
def meta_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_worker("ph", {"meta": META_SERVER}, tmp_path_factory.mktemp("param-headers")) as node:
        yield node


@pytest.fixture(scope="module")
def gw(meta_worker: str, gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    gateway = gateway_factory({})
    gateway.wait_for_tools(TOOL)
    return gateway


def post(gw: RunningGateway, region: str, header: str | None, auth: dict[str, str] | None = None) -> Any:
    body = call(TOOL, {"region": region})
    headers = era(body) | (auth or {}) | ({"mcp-param-region": header} if header is not None else {})
    return rpc(gw.url, body, headers=headers)


def test_a_header_that_matches_its_argument_runs_the_call(gw: RunningGateway) -> None:
    r = post(gw, "eu-west", "eu-west")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["isError"] is False and result["content"][0]["text"] == "eu-west"


@pytest.mark.parametrize(
    ("header", "says"),
    [("us-east", "does not match the request body's 'region' argument"), (None, "header is missing")],
)
def test_a_header_that_disagrees_with_its_argument_is_refused_before_the_call(
    gw: RunningGateway, header: str | None, says: str
) -> None:
    before = gw.gateway.coalescer.calls
    r = post(gw, "eu-west", header)
    assert r.status_code == 400, r.text
    assert "Mcp-Param-Region" in r.json()["error"]["message"] and says in r.json()["error"]["message"]
    assert gw.gateway.coalescer.calls == before, "nothing was queued"


def test_a_caller_without_the_tools_scope_gets_the_scope_refusal_not_the_headers(
    meta_worker: str, auth_gw: RunningGateway
) -> None:
    """reader-bot may call time/* only: the scope guard refuses its call before any header is
    looked at, and the lookup gives no schema for a tool its tools/list does not show."""
    auth_gw.wait_for_tools(TOOL)
    reader = bearer(token_for(auth_gw, "reader-bot"))
    r = post(auth_gw, "eu-west", "us-east", reader)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "insufficient_scope", r.text
    ops = bearer(token_for(auth_gw, "ops-bot"))
    assert post(auth_gw, "eu-west", "us-east", ops).status_code == 400
    assert post(auth_gw, "eu-west", "eu-west", ops).json()["result"]["content"][0]["text"] == "eu-west"


def test_the_lookup_answers_as_the_callers_listing_would(meta_worker: str, auth_gw: RunningGateway) -> None:
    """The schema lookup itself, in the gateway's process, under each caller's token."""
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    auth_gw.wait_for_tools(TOOL)
    lookup = auth_gw.gateway.server.get_tool_input_schema
    assert lookup is not None

    def as_caller(scopes: list[str]) -> Any:
        token = AccessToken(token="t", client_id="c", scopes=scopes)
        reset = auth_context_var.set(AuthenticatedUser(token))
        try:
            return lookup(TOOL)
        finally:
            auth_context_var.reset(reset)

    schema = as_caller(["tools:call:*"])
    assert schema["properties"]["region"]["x-mcp-header"] == "Region"
    assert as_caller(["tools:call:time/*"]) is None
    assert lookup(TOOL) is None, "no token: nothing to check with"
    assert lookup("meta__nonexistent") is None
