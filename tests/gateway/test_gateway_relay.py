"""A `relay: true` server's questions and log lines through the real gateway (gateway/relay.py)
to MCP SDK clients, over real HTTP in front of a real worker: two clients at once each answer
only their own sampling request; a client that declared no sampling gets the server's clear
refusal; log lines arrive at the level the client set, and not below it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import mcp
import mcp_types as types
import pytest

from tests.conftest import CONFIG, RELAY_SERVER
from tests.gateway.conftest import RunningGateway

TOOL = f"{RELAY_SERVER}__test_sampling"


@pytest.fixture(scope="module")
def relay_gw(gateway_factory: Callable[..., RunningGateway], relay_worker: str) -> RunningGateway:
    servers = {**CONFIG["servers"], RELAY_SERVER: {"command": "unused-here", "relay": True}}
    gw = gateway_factory({}, extra={"servers": servers})
    gw.wait_for_tools(TOOL, f"{RELAY_SERVER}__test_tool_with_logging")
    return gw


def sampler(text: str, asked: list[str]) -> Any:
    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        asked.append(content.text if isinstance(content, types.TextContent) else "?")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=text),
            model="test",
            stop_reason="endTurn",
        )

    return sampling


def texts(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_two_clients_at_once_each_answer_their_own_question(relay_gw: RunningGateway) -> None:
    asked: dict[int, list[str]] = {0: [], 1: []}
    out: dict[int, str] = {}

    async def one(i: int) -> None:
        async with mcp.Client(
            relay_gw.url, mode="legacy", sampling_callback=sampler(f"from client {i}", asked[i])
        ) as c:
            for round_ in range(3):
                result = await c.call_tool(TOOL, {"prompt": f"client {i} round {round_}"})
                assert result.is_error is False, result
                out[i] = texts(result)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            tg.start_soon(one, 1)

    anyio.run(main)
    assert out == {0: "LLM response: from client 0", 1: "LLM response: from client 1"}
    assert asked == {i: [f"client {i} round {r}" for r in range(3)] for i in (0, 1)}


def test_a_client_without_sampling_gets_the_servers_refusal(relay_gw: RunningGateway) -> None:
    async def main() -> types.CallToolResult:
        async with mcp.Client(relay_gw.url, mode="legacy") as c:
            return await c.call_tool(TOOL, {"prompt": "x"})

    result = anyio.run(main)
    assert result.is_error is True
    assert "did not offer sampling" in texts(result), texts(result)


@pytest.mark.parametrize(("level", "expected"), [("info", 3), ("warning", 0)])
def test_log_lines_reach_the_client_at_its_level(relay_gw: RunningGateway, level: str, expected: int) -> None:
    lines: list[types.LoggingMessageNotificationParams] = []

    async def logged(params: types.LoggingMessageNotificationParams) -> None:
        lines.append(params)

    async def main() -> None:
        async with mcp.Client(relay_gw.url, mode="legacy", logging_callback=logged) as c:
            await c.set_logging_level(level)  # type: ignore[arg-type]
            result = await c.call_tool(f"{RELAY_SERVER}__test_tool_with_logging", {})
            assert result.is_error is False
            await anyio.sleep(0.3)

    anyio.run(main)
    assert len(lines) == expected, [p.data for p in lines]
    assert all(p.level == "info" for p in lines)
