"""A scripted stand-in for the model behind `claude -p`: an Anthropic Messages API endpoint that
answers from a script, not a model. It stands in for the model only (never for Claude Code, nor
for this project's code): no package ships a model that speaks the Messages API offline here,
and Claude Code's own prompt is longer than a small local model's context.

    python -m cli.scripted_model PORT SCRIPT.json

The script is a list of turns. The turn answered is the number of assistant messages already in
the request's history (so a resumed session picks up where it was), clamped to the last turn:
- {"text": "..."}                         a final answer (stop_reason end_turn)
- {"tool": "Bash", "input": {...}}        a tool use (stop_reason tool_use); Claude Code runs it
- {"error": 529, "message": "..."}        an HTTP error answer
- {"garbage": true}                       a body that is not the Messages API
- {"sleep": 5, ...}                       wait that long first (a slow model)
Every request is appended to SCRIPT.json + ".requests" (one JSON line: model, turn, tools offered).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SCRIPT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("script.json")


def _sse(events: list[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _block(turn: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if "tool" in turn:
        block = {
            "type": "tool_use",
            "id": f"toolu_{uuid.uuid4().hex[:20]}",
            "name": turn["tool"],
            "input": turn["input"],
        }
        return block, "tool_use"
    return {"type": "text", "text": turn.get("text", "")}, "end_turn"


async def messages(request: Request) -> Response:
    body = await request.json()
    turns: list[dict[str, Any]] = json.loads(SCRIPT.read_text())
    done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
    turn = turns[min(done, len(turns) - 1)]
    with open(str(SCRIPT) + ".requests", "a", encoding="utf-8") as log:
        names = [t.get("name") for t in body.get("tools") or []]
        log.write(json.dumps({"model": body.get("model"), "turn": done, "tools": names}) + "\n")
    if turn.get("sleep"):
        await asyncio.sleep(float(turn["sleep"]))
    if "error" in turn:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": turn.get("message", "")}}
        return JSONResponse(error, status_code=int(turn["error"]))
    if turn.get("garbage"):
        return PlainTextResponse("<html>not an API</html>", status_code=200, media_type="text/html")
    block, stop = _block(turn)
    usage = {"input_tokens": 100 + 10 * done, "output_tokens": 20}
    message: dict[str, Any] = {
        "id": f"msg_{uuid.uuid4().hex[:16]}", "type": "message", "role": "assistant",
        "model": body.get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }  # fmt: skip
    if not body.get("stream"):
        return JSONResponse({**message, "content": [block], "stop_reason": stop, "usage": usage})
    start: dict[str, Any]
    delta: dict[str, Any]
    if block["type"] == "text":
        start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
    else:
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", end),
        ("message_stop", {"type": "message_stop"}),
    ]
    return StreamingResponse(_sse(events), media_type="text/event-stream")


async def count_tokens(request: Request) -> Response:
    return JSONResponse({"input_tokens": 100})


async def anything(request: Request) -> Response:
    return JSONResponse({})


app = Starlette(
    routes=[
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/{path:path}", anything, methods=["GET", "POST", "HEAD"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
