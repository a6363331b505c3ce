"""workers/failover.py target_queue: where a call from a dead worker's own queue goes (messages
as kombu's Redis transport stores them)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tasks.queues import SERVER_HEADER
from workers.failover import target_queue


def message(
    task: str, body: Any, *, headers: dict[str, str] | None = None, encode: bool = True
) -> dict[str, Any]:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return {
        "body": base64.b64encode(raw).decode() if encode else raw.decode(),
        "headers": {"task": task, **(headers or {})},
        "properties": {"body_encoding": "base64"} if encode else {},
    }


CALL = [["git", "git_status", {}], {}, {}]


@pytest.mark.parametrize(
    ("payload", "queue"),
    [
        (message("agentful.call_tool", CALL, headers={SERVER_HEADER: "time"}), "mcp.time"),  # header wins
        (message("agentful.call_tool", CALL), "mcp.git"),  # published before the header: the body
        (message("agentful.call_tool", CALL, encode=False), "mcp.git"),
        (message("agentful.list_tools", [["git"], {}, {}]), "mcp.git"),
        (message("agentful.read_resource", b"\x00signed", headers={SERVER_HEADER: "files"}), "mcp.files"),
        (message("agentful.call_tool", b"\x00signed envelope"), "agentful"),  # unreadable, no header
        (message("agentful.call_tool", [[], {}, {}]), "agentful"),
        (message("agentful.ping", [[], {}, {}]), "agentful"),
        (message("agentful.call_tool", CALL, headers={SERVER_HEADER: ""}), "mcp.git"),
    ],
)
def test_target_queue(payload: dict[str, Any], queue: str) -> None:
    assert target_queue(payload) == queue
