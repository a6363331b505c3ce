"""`batchConcurrency`: how many calls of one batch message a worker runs at once on a session.

A real `celery worker` with two sessions to the same stdio server (tests/servers/meta_echo.py),
one at the default width (16) and one at 3; the server itself reports how many of its `overlap`
calls were running at once, so the bound is read off the server, not off the worker.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import META_SERVER, own_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def width_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    servers = {"wide": META_SERVER, "narrow": {**META_SERVER, "batchConcurrency": 3}}
    with own_worker("bw", servers, tmp_path_factory.mktemp("width")) as node:
        yield node


def overlaps(server: str, n: int) -> list[int]:
    from tasks import call_tools

    batch = call_tools([{"server": server, "tool": "overlap", "arguments": {"seconds": 0.5}}] * n)
    assert len(batch.batches) == 1, "one message: the width is per batch message"
    values = batch.get(timeout=60)
    assert all(v["is_error"] is False and v["worker"] == "bw@" + socket.gethostname() for v in values)
    return [int(v["content"][0]["text"]) for v in values]


def test_a_batch_runs_at_most_its_servers_width_at_once_and_every_call(width_worker: str) -> None:
    narrow = overlaps("narrow", 20)
    assert max(narrow) == 3, f"at once on the server: {sorted(narrow)}"
    assert len(narrow) == 20


def test_the_default_width_is_16_and_the_server_runs_them_at_once(width_worker: str) -> None:
    wide = overlaps("wide", 20)
    assert max(wide) == 16, f"at once on the server: {sorted(wide)}"
