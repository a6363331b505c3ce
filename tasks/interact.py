"""A call of a `relay: true` server from Python, its questions answered by functions of yours
(the channel: tasks/relay.py).

    from tasks.interact import call_interactive
    result = call_interactive("llm-tools", "summarize", {"path": "README.md"},
                              on_sampling=my_model, on_log=print)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.relay import DEFAULT_WAIT_S, REPLY_TTL_S, RelayWish, answer_body, check_relay

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def call_interactive(
    server: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    on_sampling: Answer | None = None,
    on_elicitation: Answer | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    log_level: str = "info",
    timeout_s: float = 300.0,
    relay_wait_s: float = DEFAULT_WAIT_S,
    **options: Any,
) -> Any:
    """Run one call of a `relay` server, answering its sampling and elicitation requests with the
    functions given (each takes the request's params and returns the MCP result as a dict;
    raising refuses the request with that message) and handing its log messages at `log_level`
    and above to `on_log`. The server waits `relay_wait_s` for each answer. Returns the call's
    ToolResult; `options` are `call_tool`'s keywords."""
    from celery import uuid as celery_uuid

    from tasks.api import call_tool
    from tasks.progress import channel, redis_client, store_url

    url = store_url()
    wish = RelayWish(
        on_sampling is not None, on_elicitation is not None, log_level if on_log else None, relay_wait_s
    )
    option = wish.as_option()
    check_relay(option)
    task_id = celery_uuid()
    client = redis_client(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(task_id))
    try:
        result = call_tool.apply_async(
            (server, tool, arguments), {**options, "relay": option}, task_id=task_id
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message.get("type") == "message":
                _handle(client, json.loads(message["data"]), on_sampling, on_elicitation, on_log)
            elif result.ready():
                return result.get(timeout=5)
        raise TimeoutError(f"no result for {server}/{tool} (task {task_id}) within {timeout_s} s")
    finally:
        pubsub.close()


def _handle(
    client: Any,
    event: dict[str, Any],
    on_sampling: Answer | None,
    on_elicitation: Answer | None,
    on_log: Callable[[dict[str, Any]], None] | None,
) -> None:
    kind = event.get("kind")
    if kind == "log" and on_log is not None:
        on_log(event)
        return
    if kind != "ask" or not isinstance(event.get("reply"), str):
        return  # progress, or nothing of ours
    answer = on_sampling if event.get("method") == "sampling/createMessage" else on_elicitation
    reply = event["reply"]

    def run() -> None:
        if answer is None:
            body = answer_body(code=-32601, message=f"this caller does not answer {event.get('method')}")
        else:
            try:
                body = answer_body(answer(dict(event.get("params") or {})))
            except Exception as exc:
                body = answer_body(code=-32603, message=f"the caller refused: {exc}")
        client.rpush(reply, body)
        client.expire(reply, REPLY_TTL_S)

    threading.Thread(target=run, name=f"relay-{reply[-8:]}", daemon=True).start()
