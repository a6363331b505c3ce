"""A scripted OpenAI-compatible chat-completions endpoint that misbehaves on purpose, for the
code generator's fault handling (the real model server is llama.cpp's, in tests/agents).

    python -m tests.servers.openai_faults PORT SCRIPT.json

SCRIPT.json is a list of answers, one per request (the last one repeats):
{"status": 429, "retry_after": "1"}, {"status": 503}, {"garbage": true}, {"sleep": 30},
{"text": "```python\\nprint(1)\\n```"} (a good streamed answer), {"text": "...", "cut": true} (the
stream ends mid-answer: no finish reason, no [DONE]).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SCRIPT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("script.json")
_count = 0


def _chunks(text: str, cut: bool = False) -> Iterator[str]:
    for word in text.split(" "):
        chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    if cut:
        return
    usage = {"prompt_tokens": 12, "completion_tokens": len(text.split(" ")), "total_tokens": 20}
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
    yield f"data: {json.dumps(done)}\n\n"
    yield "data: [DONE]\n\n"


async def completions(request: Request) -> Response:
    global _count
    await request.json()
    answers = json.loads(SCRIPT.read_text())
    answer = answers[min(_count, len(answers) - 1)]
    _count += 1
    if answer.get("sleep"):
        await asyncio.sleep(float(answer["sleep"]))
    if "status" in answer:
        headers = {"retry-after": str(answer["retry_after"])} if "retry_after" in answer else {}
        return JSONResponse(
            {"error": {"message": "busy"}}, status_code=int(answer["status"]), headers=headers
        )
    if answer.get("garbage"):
        return PlainTextResponse("<html>proxy error</html>", media_type="text/html")
    return StreamingResponse(
        _chunks(answer.get("text", ""), bool(answer.get("cut"))), media_type="text/event-stream"
    )


app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
