"""tools/call requests that arrive together travel as one batch (gateway/coalesce.py): each keeps
its own result and its own error, through the real gateway, broker and workers."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import mcp

from tests.conftest import HAS_NODE, need
from tests.gateway.conftest import RunningGateway


def test_concurrent_calls_each_get_their_own_result_and_error(gateway: RunningGateway) -> None:
    need(HAS_NODE, "server-everything needs Node")
    coalescer = gateway.gateway.coalescer
    calls_before = coalescer.calls

    async def session(n: int) -> list[Any]:
        async with mcp.Client(gateway.url) as client:
            good = [client.call_tool("everything__echo", {"message": f"s{n}-{i}"}) for i in range(8)]
            bad = client.call_tool("everything__echo", {"message": 5})
            return list(await asyncio.gather(*good, bad))

    async def main() -> list[list[Any]]:
        return list(await asyncio.gather(*(session(n) for n in range(3))))

    for n, results in enumerate(anyio.run(main)):
        *good, bad = results
        assert [r.content[0].text for r in good] == [f"Echo: s{n}-{i}" for i in range(8)]
        assert not any(r.is_error for r in good)
        assert bad.is_error and "InvalidArgumentsError" in bad.content[0].text
    # Every good call went through the coalescer; a bad one was refused before it.
    assert coalescer.calls - calls_before == 24


def test_calls_queued_in_one_turn_of_the_loop_travel_as_one_message(
    gateway: RunningGateway, published: list[str]
) -> None:
    need(HAS_NODE, "server-everything needs Node")
    from gateway.coalesce import Coalescer
    from tasks import call_tool
    from tasks.batch import prepare_call

    coalescer = Coalescer()
    calls = [prepare_call({"server": "everything", "tool": "echo", "arguments": {"message": f"m{i}"}},
                          trace_id=f"{i:032x}") for i in range(5)]  # fmt: skip

    async def main() -> None:
        await asyncio.gather(*(coalescer.submit(c) for c in calls))

    published.clear()
    asyncio.run(main())
    assert (coalescer.batches, coalescer.calls) == (1, 5)
    assert published == ["agentful.call_batch"]
    texts = [call_tool.AsyncResult(c.id).get(timeout=30)["content"][0]["text"] for c in calls]
    assert texts == [f"Echo: m{i}" for i in range(5)]


def test_a_lone_call_is_a_plain_call_tool(gateway: RunningGateway, published: list[str]) -> None:
    """A batch of one is sent as the call it is: Flower shows `everything.echo(...)`."""
    need(HAS_NODE, "server-everything needs Node")
    from gateway.coalesce import Coalescer
    from tasks import call_tool
    from tasks.batch import prepare_call

    coalescer = Coalescer()
    call = prepare_call({"server": "everything", "tool": "echo", "arguments": {"message": "alone"}})

    async def main() -> None:
        await asyncio.wait_for(coalescer.submit(call), 10)

    published.clear()
    asyncio.run(main())
    assert published == ["agentful.call_tool"]
    assert call_tool.AsyncResult(call.id).get(timeout=30)["content"][0]["text"] == "Echo: alone"


def test_coalescing_can_be_switched_off(gateway_factory: Any, published: list[str]) -> None:
    need(HAS_NODE, "server-everything needs Node")
    gw = gateway_factory({"coalesce": False})
    gw.wait_for_tools("everything__echo")

    async def main() -> list[Any]:
        async with mcp.Client(gw.url) as client:
            return list(await asyncio.gather(*(client.call_tool("everything__echo", {"message": str(i)})
                                               for i in range(4))))  # fmt: skip

    published.clear()
    results = anyio.run(main)
    assert [r.content[0].text for r in results] == [f"Echo: {i}" for i in range(4)]
    assert gw.gateway.coalescer.calls == 0
    assert set(published) == {"agentful.call_tool"} and len(published) == 4
