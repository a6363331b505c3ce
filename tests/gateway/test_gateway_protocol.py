"""The gateway's protocol utilities end to end: progress in JSON-response mode (SSE for that
request only), logging/setLevel, completion/complete, resources/subscribe and unsubscribe.
Real workers, real MCP servers, the default gateway (JSON responses)."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import mcp
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import HAS_NODE, need
from tests.gateway.conftest import RunningGateway, rpc
from tests.gateway.test_gateway import legacy_session, still_serves

LONG = "everything__trigger-long-running-operation"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_progress_reaches_the_client_in_json_mode(gateway: RunningGateway, mode: str) -> None:
    """jsonResponse true (the default): a call with a progressToken still gets its progress."""
    need(HAS_NODE, "server-everything needs Node")
    assert gateway.config.gateway.json_response
    gateway.wait_for_tools(LONG)
    events: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total))

    async def go() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with mcp.Client(gateway.url, mode=mode, read_timeout_seconds=60) as c:
            with_progress = await c.call_tool(
                LONG, {"duration": 1, "steps": 4}, progress_callback=on_progress
            )
            plain = await c.call_tool("time__get_current_time", {"timezone": "UTC"})  # JSON again
            return with_progress, plain

    with_progress, plain = anyio.run(go)
    assert not with_progress.is_error, with_progress
    assert [e[0] for e in events] == [1, 2, 3, 4], events
    assert all(e[1] == 4 for e in events)
    assert (
        not plain.is_error
        and json.loads(cast("types.TextContent", plain.content[0]).text)["timezone"] == "UTC"
    )


def _call(progress_token: Any, accept: str = "application/json, text/event-stream") -> Any:
    params: dict[str, Any] = {"name": LONG, "arguments": {"duration": 1, "steps": 2}}
    if progress_token is not None:
        params["_meta"] = {"progressToken": progress_token}
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}


def test_only_a_request_with_a_progress_token_is_answered_as_sse(gateway: RunningGateway) -> None:
    need(HAS_NODE, "server-everything needs Node")
    gateway.wait_for_tools(LONG)
    headers = legacy_session(gateway.url)
    plain = rpc(gateway.url, _call(None), headers=headers, timeout_s=60)
    assert plain.headers["content-type"].startswith("application/json"), plain.headers
    assert plain.json()["result"]["isError"] is False
    streamed = rpc(gateway.url, _call("tok-1"), headers=headers, timeout_s=60)
    assert streamed.headers["content-type"].startswith("text/event-stream"), streamed.headers
    frames = [json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:")]
    progress = [f["params"] for f in frames if f.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [1, 2] and {p["progressToken"] for p in progress} == {"tok-1"}
    assert frames[-1]["id"] == 7 and frames[-1]["result"]["isError"] is False
    # A client that accepts only JSON gets JSON (and no progress): never a 406.
    json_only = rpc(
        gateway.url, _call("tok-2"), headers={**headers, "accept": "application/json"}, timeout_s=60
    )
    assert json_only.status_code == 200 and json_only.headers["content-type"].startswith("application/json")
    assert json_only.json()["result"]["isError"] is False
    still_serves(gateway)


def test_logging_set_level_is_accepted(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    ok = rpc(
        gateway.url,
        {"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel", "params": {"level": "debug"}},
        headers=headers,
    ).json()
    assert ok == {"jsonrpc": "2.0", "id": 3, "result": {}}
    bad = rpc(
        gateway.url,
        {"jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": {"level": "loud"}},
        headers=headers,
    ).json()
    assert bad["error"]["code"] == -32602, bad

    async def caps() -> Any:
        async with mcp.Client(gateway.url, mode="legacy") as c:
            return c.server_capabilities

    capabilities = anyio.run(caps)
    assert capabilities.logging is not None and capabilities.completions is not None
    assert capabilities.resources is not None and capabilities.resources.subscribe


def test_completion_is_forwarded_to_the_owning_server(gateway: RunningGateway) -> None:
    need(HAS_NODE, "server-everything needs Node")

    async def go() -> tuple[Any, Any, MCPError]:
        async with mcp.Client(gateway.url, mode="legacy", read_timeout_seconds=60) as c:
            ref = types.PromptReference(type="ref/prompt", name="everything__completable-prompt")
            departments = await c.complete(ref, {"name": "department", "value": "S"})
            names = await c.complete(ref, {"name": "name", "value": "A"}, {"department": "Engineering"})
            try:
                await c.complete(
                    types.PromptReference(type="ref/prompt", name="no__such"), {"name": "a", "value": ""}
                )
            except MCPError as exc:
                return departments, names, exc
            raise AssertionError("an unknown prompt was completed")

    departments, names, unknown = anyio.run(go)
    assert departments.completion.values == ["Sales", "Support"]
    assert names.completion.values == ["Alice"]
    assert unknown.code == -32602 and "Unknown prompt" in unknown.message


def test_subscribe_and_unsubscribe(gateway: RunningGateway) -> None:
    need(HAS_NODE, "server-everything needs Node")
    headers = legacy_session(gateway.url)

    def call(method: str, uri: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"uri": uri, **({"_meta": meta} if meta else {})}
        body: dict[str, Any] = rpc(
            gateway.url,
            {"jsonrpc": "2.0", "id": 9, "method": method, "params": params},
            headers=headers,
            timeout_s=60,
        ).json()
        return body

    listed = rpc(
        gateway.url, {"jsonrpc": "2.0", "id": 8, "method": "resources/list"}, headers=headers, timeout_s=60
    ).json()
    uri = next(r["uri"] for r in listed["result"]["resources"] if r["uri"].startswith("demo://"))
    assert call("resources/subscribe", uri, {"agentful/server": "everything"}) == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {},
    }
    assert uri in gateway.gateway.resource_routes.subscriptions
    unknown = call("resources/subscribe", "nothere://x")
    assert unknown["error"]["code"] == -32602 and "Unknown resource" in unknown["error"]["message"]
    assert call("resources/unsubscribe", uri)["result"] == {}
    assert uri not in gateway.gateway.resource_routes.subscriptions
    assert call("resources/unsubscribe", uri)["result"] == {}  # idempotent
    still_serves(gateway)
