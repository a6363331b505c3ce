"""The gateway over real Streamable HTTP, in front of real workers and real MCP servers."""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import HAS_NODE, need
from tests.gateway.conftest import RunningGateway, rpc

MODES = ["2026-07-28", "legacy"]


def run(coro: Any) -> Any:
    return anyio.run(lambda: coro)


async def _tools(url: str, mode: str) -> list[str]:
    async with mcp.Client(url, mode=mode) as c:
        return [t.name for t in (await c.list_tools()).tools]


@pytest.mark.parametrize("mode", MODES)
def test_lists_the_cluster_tools_namespaced(gateway: RunningGateway, mode: str) -> None:
    names = anyio.run(_tools, gateway.url, mode)
    assert "time__get_current_time" in names
    assert "git__git_status" in names
    assert all("__" in n for n in names), names
    if HAS_NODE:
        assert "everything__echo" in names


async def _call(url: str, mode: str, name: str, args: dict[str, Any], **kw: Any) -> Any:
    async with mcp.Client(url, mode=mode, **kw) as c:
        return await c.call_tool(name, args)


@pytest.mark.parametrize("mode", MODES)
def test_calls_time_through_the_cluster(gateway: RunningGateway, mode: str) -> None:
    result = anyio.run(_call, gateway.url, mode, "time__get_current_time", {"timezone": "UTC"})
    assert not result.is_error, result
    assert json.loads(result.content[0].text)["timezone"] == "UTC"


@pytest.mark.parametrize("mode", MODES)
def test_calls_everything_echo(gateway: RunningGateway, mode: str) -> None:
    need(HAS_NODE, "server-everything needs Node")
    result = anyio.run(_call, gateway.url, mode, "everything__echo", {"message": f"hi {mode}"})
    assert not result.is_error, result
    assert result.content[0].text == f"Echo: hi {mode}"


def test_negotiated_versions(gateway: RunningGateway) -> None:
    async def versions() -> tuple[str, str]:
        async with mcp.Client(gateway.url, mode="legacy") as old, mcp.Client(gateway.url) as new:
            return old.protocol_version, new.protocol_version

    old, new = anyio.run(versions)
    assert old == "2025-11-25"
    assert new == "2026-07-28"


def test_healthz(gateway: RunningGateway) -> None:
    import httpx2

    body = httpx2.get(f"{gateway.base}/healthz", timeout=10).json()
    assert body["status"] == "ok"
    assert "time" in body["servers"]


def test_raw_initialize_and_call(gateway: RunningGateway) -> None:
    """A plain JSON-RPC client (no SDK): JSON responses by default."""
    init = rpc(
        gateway.url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
    )
    assert init.status_code == 200, init.text
    assert init.headers["content-type"].startswith("application/json")
    caps = init.json()["result"]["capabilities"]
    assert caps["tools"]["listChanged"] is True
    assert caps["tasks"]["requests"]["tools"]["call"] == {}
    sid = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    rpc(gateway.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=sid)
    call = rpc(
        gateway.url,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}},
        },
        headers=sid,
    )
    assert call.status_code == 200, call.text
    assert call.json()["result"]["isError"] is False


def legacy_session(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers of a fresh, initialized 2025-11-25 session (raw JSON-RPC); `extra` (a bearer
    token) is sent with every request and is part of the returned headers."""
    init = rpc(
        url,
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        },
        headers=extra,
    )
    assert init.status_code == 200, init.text
    headers = {
        **(extra or {}),
        "mcp-session-id": init.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    assert (
        rpc(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers).status_code
        == 202
    )
    return headers


def still_serves(gw: RunningGateway) -> None:
    result = anyio.run(_call, gw.url, "2026-07-28", "time__get_current_time", {"timezone": "UTC"})
    assert not result.is_error


def call_raw(gw: RunningGateway, headers: dict[str, str], name: str, arguments: Any) -> dict[str, Any]:
    r = rpc(
        gw.url,
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments}},
        headers=headers,
    )
    assert r.headers["content-type"].startswith("application/json"), r.text
    body: dict[str, Any] = r.json()
    return body


def test_malformed_json_is_a_parse_error(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    r = rpc(gateway.url, b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700
    still_serves(gateway)


def test_not_json_rpc_is_an_invalid_request(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    bodies: list[Any] = [
        {"hello": "world"},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        [],
        42,
        {"jsonrpc": "2.0", "id": 1},
        # A batch: MCP removed JSON-RPC batching (2025-06-18); neither era the gateway speaks has it.
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}],
        # An id must be a string, a number or null.
        {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"},
        {"jsonrpc": "2.0", "id": [1], "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
    ]
    for body in bodies:
        r = rpc(gateway.url, json.dumps(body).encode(), headers=headers)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == -32600, (body, r.text)
        assert r.json()["error"]["message"].startswith("Invalid Request")
        assert r.json()["id"] is None
    still_serves(gateway)


def test_a_body_nested_ten_thousand_deep_is_a_parse_error_not_a_crash(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    deep = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}"
    )
    r = rpc(gateway.url, deep, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == -32700
    still_serves(gateway)


@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
def test_unknown_method(gateway: RunningGateway, era: str) -> None:
    if era == "2025-11-25":
        headers = legacy_session(gateway.url)
        params: dict[str, Any] = {}
    else:
        headers = {"mcp-protocol-version": era, "mcp-method": "no/such-method"}
        params = {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": era,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        }
    r = rpc(
        gateway.url,
        {"jsonrpc": "2.0", "id": 3, "method": "no/such-method", "params": params},
        headers=headers,
    )
    assert r.json()["error"]["code"] == -32601, r.text
    still_serves(gateway)


def test_oversized_body_is_refused(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    limit = gateway.config.mcp.server.max_request_bytes
    big = {"message": "x" * (limit + 70_000)}
    r = rpc(
        gateway.url,
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {"name": "everything__echo", "arguments": big},
        },
        headers=headers,
    )
    assert r.status_code == 413, r.text
    still_serves(gateway)


def test_arguments_over_the_limit_are_a_tool_error(gateway: RunningGateway) -> None:
    """Under the body limit but over mcp.server.maxRequestBytes: refused before it is queued."""
    headers = legacy_session(gateway.url)
    limit = gateway.config.mcp.server.max_request_bytes
    body = call_raw(gateway, headers, "time__get_current_time", {"timezone": "x" * (limit + 10)})
    assert body["result"]["isError"] is True
    assert "PayloadTooLargeError" in body["result"]["content"][0]["text"]
    still_serves(gateway)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("get_current_time", "not namespaced"),
        ("time__no_such_tool", "unknown tool"),
        ("nosuchserver__echo", "unknown server"),
        ("", "empty"),
    ],
)
def test_bad_tool_names_are_invalid_params(gateway: RunningGateway, name: str, why: str) -> None:
    headers = legacy_session(gateway.url)
    body = call_raw(gateway, headers, name, {})
    assert body["error"]["code"] == -32602, (why, body)
    assert "Unknown tool" in body["error"]["message"]
    still_serves(gateway)


def test_bad_tool_name_through_the_sdk_client(gateway: RunningGateway) -> None:
    async def attempt() -> MCPError | None:
        async with mcp.Client(gateway.url) as c:
            try:
                await c.call_tool("echo", {"message": "x"})
            except MCPError as exc:
                return exc
            return None

    error = anyio.run(attempt)
    assert error is not None and error.code == -32602
    assert "<server>__<tool>" in error.message


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({}, "timezone"), ({"timezone": 5}, "timezone")],
)
def test_arguments_failing_the_schema_are_a_tool_error(
    gateway: RunningGateway, arguments: dict[str, Any], field: str
) -> None:
    """2025-11-25 tools spec: input validation errors are tool execution errors (isError), so the
    model can read and correct them; nothing is queued."""
    headers = legacy_session(gateway.url)
    body = call_raw(gateway, headers, "time__get_current_time", arguments)
    result = body["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "InvalidArgumentsError" in text and "input schema" in text and field in text
    still_serves(gateway)


def test_arguments_not_an_object(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    body = call_raw(gateway, headers, "time__get_current_time", ["UTC"])
    assert body["error"]["code"] == -32602, body
    still_serves(gateway)
