"""A `relay: true` server's sampling and elicitation requests and log messages reach the Python
caller that made the call (tasks/relay.py, tasks/interact.py, workers/relay.py): a real `celery
worker` running the conformance fixture over stdio, calls from this process. Each caller gets its
own questions, never another's; a caller that offers nothing, refuses, or never answers gives the
server a clear error; bad relay options are refused before anything is queued."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import RELAY_SERVER as SERVER


def text_of(result: dict[str, Any]) -> str:
    return " ".join(str(c.get("text", "")) for c in result["content"])


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "model": "test", "content": {"type": "text", "text": text}}


def test_sampling_is_answered_by_the_caller(relay_worker: str) -> None:
    from tasks.interact import call_interactive

    asked: list[dict[str, Any]] = []

    def on_sampling(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        return answer("forty-two")

    result = call_interactive(
        SERVER, "test_sampling", {"prompt": "the answer?"}, on_sampling=on_sampling, timeout_s=60
    )
    assert result["is_error"] is False, result
    assert text_of(result) == "LLM response: forty-two"
    assert asked[0]["messages"][0]["content"]["text"] == "the answer?"
    assert asked[0]["maxTokens"] == 100


def test_elicitation_is_answered_and_logs_reach_the_caller_at_its_level(relay_worker: str) -> None:
    from tasks.interact import call_interactive

    def on_elicitation(params: dict[str, Any]) -> dict[str, Any]:
        assert params["requestedSchema"]["type"] == "object"
        return {"action": "accept", "content": {"username": "ada", "email": "ada@example.org"}}

    result = call_interactive(SERVER, "test_elicitation", {"message": "who?"}, on_elicitation=on_elicitation)
    assert "action=accept" in text_of(result) and "ada@example.org" in text_of(result), result
    lines: list[dict[str, Any]] = []
    result = call_interactive(SERVER, "test_tool_with_logging", {}, on_log=lines.append)
    assert result["is_error"] is False
    assert [line["data"] for line in lines] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    assert {line["level"] for line in lines} == {"info"}
    quiet: list[dict[str, Any]] = []
    call_interactive(SERVER, "test_tool_with_logging", {}, on_log=quiet.append, log_level="warning")
    assert quiet == []


def test_concurrent_callers_each_get_their_own_questions(relay_worker: str) -> None:
    """Four callers at once on one session: the session runs them one at a time, so every
    question reaches the caller whose call asked it (workers/relay.py)."""
    from tasks.interact import call_interactive

    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            r = call_interactive(
                SERVER, "test_sampling", {"prompt": f"p{i}"},
                on_sampling=lambda params: answer(f"for {params['messages'][0]['content']['text']} from {i}"),
                timeout_s=90,
            )  # fmt: skip
            results[i] = text_of(r)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {i: f"LLM response: for p{i} from {i}" for i in range(4)}


def test_a_caller_that_offers_nothing_refuses_or_is_silent_gives_the_server_a_clear_error(
    relay_worker: str,
) -> None:
    from tasks import call_tool
    from tasks.errors import ToolProtocolError
    from tasks.interact import call_interactive

    # The fixture passes the refusal on as its tools/call error: a protocol error, and it says why.
    with pytest.raises(ToolProtocolError, match="cannot answer it \\(it did not offer sampling\\)"):
        call_tool.delay(SERVER, "test_sampling", {"prompt": "x"}).get(timeout=60)

    def refuse(params: dict[str, Any]) -> dict[str, Any]:
        raise PermissionError("no model for you")

    with pytest.raises(ToolProtocolError, match="the caller refused: no model for you"):
        call_interactive(SERVER, "test_sampling", {"prompt": "x"}, on_sampling=refuse)

    def silent(params: dict[str, Any]) -> dict[str, Any]:
        threading.Event().wait(5)  # longer than the call lets it wait
        return answer("too late")

    with pytest.raises(ToolProtocolError, match="the caller did not answer within 1 s"):
        call_interactive(SERVER, "test_sampling", {"prompt": "x"}, on_sampling=silent, relay_wait_s=1)
    # The session serves on: the next caller is answered.
    again = call_interactive(SERVER, "test_sampling", {"prompt": "x"}, on_sampling=lambda p: answer("ok"))
    assert text_of(again) == "LLM response: ok"


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ("yes", "relay must be a mapping"),
        ({"sampling": "yes"}, "relay.sampling must be true or false"),
        ({"logLevel": "loud"}, "relay.logLevel must be one of"),
        ({"bogus": 1}, "relay: unknown key 'bogus'"),
        ({"sampling": True, "waitS": 0}, "relay.waitS"),
        ({"sampling": True, "waitS": True}, "relay.waitS"),
    ],
)
def test_bad_relay_options_are_refused_before_anything_is_queued(
    relay_worker: str, relay: Any, message: str
) -> None:
    from tasks import call_tool
    from tasks.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match=message.replace(".", r"\.")):
        call_tool.delay(SERVER, "test_sampling", {"prompt": "x"}, relay=relay)


def test_batched_calls_refuse_relay(relay_worker: str) -> None:
    from tasks import call_tools
    from tasks.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="relay no progress, questions or logs"):
        call_tools([{"server": SERVER, "tool": "test_sampling", "arguments": {"prompt": "x"}, "relay": {}}])
