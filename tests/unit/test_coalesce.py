"""gateway/coalesce.py's bookkeeping: who learns what when a flush queues some calls or none
(the sending itself runs against the real broker in tests/gateway/test_gateway_coalesce.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import coalesce
from tasks.batch import CallsNotQueuedError, PreparedCall


def call(task_id: str) -> PreparedCall:
    return PreparedCall(
        task_id, "s", "mcp.s", None, {"id": task_id, "tool": "t", "arguments": {}, "kwargs": {}}
    )


def flush_with(monkeypatch: pytest.MonkeyPatch, error: BaseException | None, ids: list[str]) -> list[Any]:
    sent: list[list[str]] = []

    def send(calls: list[PreparedCall]) -> None:
        sent.append([c.id for c in calls])
        if error is not None:
            raise error

    monkeypatch.setattr(coalesce, "send_calls", send)

    async def main() -> list[Any]:
        c = coalesce.Coalescer()
        futures = [c.submit(call(i)) for i in ids]
        futures[-1].cancel()  # its request went away before the flush
        out = await asyncio.gather(*futures, return_exceptions=True)
        assert (c.batches, c.calls) == (1, len(ids)) and sent == [ids]
        return list(out)

    return asyncio.run(main())


def test_everything_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    out = flush_with(monkeypatch, None, ["a", "b", "c"])
    assert out[:2] == [None, None] and isinstance(out[2], asyncio.CancelledError)


def test_some_queued_before_the_broker_went_away(monkeypatch: pytest.MonkeyPatch) -> None:
    error = CallsNotQueuedError("broker gone; 1 of the 3 calls were queued before it")
    error.queued = frozenset({"a"})
    out = flush_with(monkeypatch, error, ["a", "b", "c"])
    assert out[0] is None  # queued: it runs, its caller waits for its result
    assert out[1] is error  # not queued: its caller gets the error
    assert isinstance(out[2], asyncio.CancelledError)


def test_none_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    out = flush_with(monkeypatch, OSError("no route"), ["a", "b"])
    assert isinstance(out[0], OSError) and isinstance(out[1], asyncio.CancelledError)
