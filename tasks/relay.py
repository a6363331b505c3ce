"""What an MCP server asks or tells the caller during a call: sampling, elicitation, log messages.

A server marked `relay: true` (servers.<name>.relay) may, in the middle of a tool call, send a
`sampling/createMessage` or `elicitation/create` request, or `notifications/message` log lines.
They belong to whoever made the call, so they travel back to it over the call's channel (the
same Redis pub/sub channel as its progress, `tasks.progress.channel(task_id)`):

    {"kind": "ask", "method": "sampling/createMessage", "params": {...}, "reply": "<key>"}
    {"kind": "log", "level": "info", "data": ..., "logger": "..."}

and the caller answers an ask by pushing `{"result": {...}}` or `{"error": {"code": .., "message": ..}}`
to the list `reply` names (`answer`); the worker waits for it (`wait_s`, then the server gets an
error). The gateway answers for its MCP clients (gateway/relay.py); from Python
(tasks/interact.py):

    from tasks.interact import call_interactive
    result = call_interactive("llm-tools", "summarize", {"path": "README.md"},
                              on_sampling=lambda params: {"role": "assistant", "model": "mine",
                                                          "content": {"type": "text", "text": "..."}},
                              on_log=print)

A call says what its caller can answer with the `relay` option of `call_tool`:
`{"sampling": true, "elicitation": true, "logLevel": "info"}` (each optional). A request the caller
cannot answer is refused at once, with an error that says so.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.errors import InvalidOptionError

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
REPLY_PREFIX = "agentful:relay:"
REPLY_TTL_S = 120
DEFAULT_WAIT_S = 120.0
_KEYS = frozenset({"sampling", "elicitation", "logLevel", "waitS"})


@dataclass(frozen=True)
class RelayWish:
    """What the caller of one call can answer (the `relay` option, checked)."""

    sampling: bool = False
    elicitation: bool = False
    log_level: str | None = None
    wait_s: float = DEFAULT_WAIT_S

    def as_option(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sampling": self.sampling, "elicitation": self.elicitation}
        if self.log_level is not None:
            out["logLevel"] = self.log_level
        if self.wait_s != DEFAULT_WAIT_S:
            out["waitS"] = self.wait_s
        return out

    def wants(self) -> bool:
        return self.sampling or self.elicitation or self.log_level is not None


@dataclass(frozen=True)
class RelayTarget:
    """Where one call's questions and log lines go: its caller, over the call's channel."""

    url: str
    task_id: str
    wish: RelayWish


def check_relay(value: Any) -> RelayWish | None:
    """The `relay` option of a call, checked; None when it asks for nothing."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        kind = type(value).__name__
        raise InvalidOptionError(f"relay must be a mapping like {{'sampling': True}}, not {kind}")
    unknown = sorted(set(map(str, value)) - _KEYS)
    if unknown:
        takes = ", ".join(sorted(_KEYS))
        raise InvalidOptionError(f"relay: unknown key {unknown[0][:40]!r}; it takes {takes}")
    for key in ("sampling", "elicitation"):
        if not isinstance(value.get(key, False), bool):
            raise InvalidOptionError(f"relay.{key} must be true or false")
    level = value.get("logLevel")
    if level is not None and level not in LEVELS:
        levels = ", ".join(LEVELS)
        raise InvalidOptionError(f"relay.logLevel must be one of {levels}, not {str(level)[:40]!r}")
    wait = value.get("waitS", DEFAULT_WAIT_S)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= 3600:
        raise InvalidOptionError("relay.waitS must be a number of seconds in (0, 3600]")
    wish = RelayWish(bool(value.get("sampling")), bool(value.get("elicitation")), level, float(wait))
    return wish if wish.wants() else None


def level_at_least(level: str, floor: str) -> bool:
    """Whether a message at `level` passes a `floor` (RFC 5424 order, as MCP uses)."""
    try:
        return LEVELS.index(level) >= LEVELS.index(floor)
    except ValueError:
        return True  # a level we do not know: better shown than lost


def new_reply_key(task_id: str) -> str:
    return f"{REPLY_PREFIX}{task_id}:{uuid.uuid4().hex}"


def ask_event(method: str, params: dict[str, Any], reply: str) -> str:
    event = {"kind": "ask", "method": method, "params": params, "reply": reply}
    return json.dumps(event, separators=(",", ":"))


def log_event(level: str, data: Any, logger: str | None) -> str:
    """A log line's event; data JSON cannot hold travels as its repr."""
    event = {"kind": "log", "level": level, "data": data, "logger": logger}
    return json.dumps(event, separators=(",", ":"), default=repr)


def answer_body(result: dict[str, Any] | None = None, *, code: int = -32603, message: str = "") -> str:
    """What a caller pushes to an ask's reply key: its result, or an error."""
    if result is not None:
        return json.dumps({"result": result}, separators=(",", ":"))
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
