"""The code-generation worker (the seed's GLM worker): an MCP server over any OpenAI-compatible
chat-completions endpoint: GLM's API, vLLM, llama.cpp's server, Ollama.

    CODEGEN_BASE_URL=http://127.0.0.1:8080/v1 CODEGEN_MODEL=glm-4.6 python -m workers.servers.codegen

Tools:
- `generate_code(prompt, language, files, max_tokens, temperature)`: code for a request, with
  files of the workspace (the server's cwd) as context;
- `complete_code(prefix, suffix, language, max_tokens)`: the code between a prefix and a suffix.
Both stream the answer: each batch of tokens is a progress notification. The structured result
has the code (the first fenced block of the answer, else all of it), the model, token usage,
finish reason and tokens per second. A 429 or 503 is retried after its Retry-After (at most
CODEGEN_MAX_RETRIES times, within the call's time); an endpoint that is down, too slow or
answers something else is a tool error saying so.

Environment: CODEGEN_BASE_URL (required), CODEGEN_MODEL (glm-4.6), CODEGEN_API_KEY or
CODEGEN_API_KEY_ENV (the name of the variable holding the key), CODEGEN_TIMEOUT_S (120),
CODEGEN_MAX_RETRIES (3), CODEGEN_MAX_FILE_BYTES (65536).
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

mcp = MCPServer("codegen")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
PROGRESS_EVERY_S = 0.25


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def settings() -> dict[str, Any]:
    base = os.environ.get("CODEGEN_BASE_URL", "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ToolError("CODEGEN_BASE_URL must be the endpoint's http(s) URL (…/v1); it is not set")
    key = os.environ.get("CODEGEN_API_KEY") or os.environ.get(os.environ.get("CODEGEN_API_KEY_ENV", ""), "")
    return {
        "url": base + "/chat/completions",
        "model": os.environ.get("CODEGEN_MODEL", "glm-4.6"),
        "key": key,
        "timeout_s": _env_float("CODEGEN_TIMEOUT_S", 120.0),
        "retries": int(_env_float("CODEGEN_MAX_RETRIES", 3)),
        "max_file_bytes": int(_env_float("CODEGEN_MAX_FILE_BYTES", 65536)),
    }


def read_files(names: list[str], *, root: Path, max_bytes: int) -> str:
    """The files, as context; each must be inside `root` (the workspace)."""
    parts = []
    base = root.resolve()
    for name in names:
        path = (base / name).resolve()
        if not path.is_relative_to(base) or Path(name).is_absolute():
            raise ToolError(f"file {name!r} is outside the workspace")
        if not path.is_file():
            raise ToolError(f"file {name!r} does not exist in the workspace")
        data = path.read_bytes()[:max_bytes]
        parts.append(f"--- {name}\n{data.decode(errors='replace')}")
    return "\n".join(parts)


def extract_code(text: str) -> str:
    found = _FENCE.search(text)
    return (found.group(1) if found else text).strip("\n")


def retry_after_s(value: str | None, default_s: float) -> float:
    """Seconds a Retry-After header asks for (seconds, or an HTTP date)."""
    if not value:
        return default_s
    try:
        return max(0.0, float(value))
    except ValueError:
        moment = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, moment.timestamp() - time.time()) if moment is not None else default_s


async def _stream(body: dict[str, Any], cfg: dict[str, Any], ctx: Context, deadline: float) -> dict[str, Any]:
    """One streamed completion, retried on 429/503; returns text, usage, finish reason."""
    headers = {"content-type": "application/json"}
    if cfg["key"]:
        headers["authorization"] = f"Bearer {cfg['key']}"
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolError(f"the model endpoint did not answer within {cfg['timeout_s']:g} s")
        try:
            async with (
                httpx2.AsyncClient(timeout=httpx2.Timeout(remaining, connect=min(10.0, remaining))) as http,
                http.stream("POST", cfg["url"], json=body, headers=headers) as response,
            ):
                if response.status_code in (429, 503) and attempt <= cfg["retries"]:
                    wait = retry_after_s(response.headers.get("retry-after"), 2.0**attempt)
                    if time.monotonic() + wait >= deadline:
                        raise ToolError(
                            f"the model endpoint is busy ({response.status_code}) past the call's time"
                        )
                    await ctx.report_progress(
                        0, None, f"model busy ({response.status_code}); retrying in {wait:g} s"
                    )
                    await anyio.sleep(wait)
                    continue
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")[:300]
                    raise ToolError(f"the model endpoint answered {response.status_code}: {text}")
                return await _read(response, ctx, cfg)
        except httpx2.TimeoutException as exc:
            raise ToolError(f"the model endpoint did not answer within {cfg['timeout_s']:g} s") from exc
        except httpx2.TransportError as exc:
            raise ToolError(f"the model endpoint {cfg['url']} is unreachable: {exc}") from exc


async def _read(response: Any, ctx: Context, cfg: dict[str, Any]) -> dict[str, Any]:
    if "text/event-stream" not in response.headers.get("content-type", ""):
        raw = (await response.aread()).decode(errors="replace")
        try:
            data = json.loads(raw)
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ToolError(
                f"the model endpoint answered something that is not a chat completion: {raw[:200]!r}"
            ) from exc
        return {
            "text": text,
            "usage": data.get("usage") or {},
            "finish_reason": data["choices"][0].get("finish_reason"),
            "chunks": 1,
        }
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    finish = None
    chunks = 0
    done = False
    last = time.monotonic()
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise ToolError(
                f"the model endpoint streamed something that is not JSON: {payload[:200]!r}"
            ) from exc
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                pieces.append(delta)
                chunks += 1
            finish = choice.get("finish_reason") or finish
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            await ctx.report_progress(chunks, None, "".join(pieces)[-120:])
    if finish is None:  # cut off: a dropped connection, a server that took another request
        how = "[DONE] without a finish reason" if done else "no finish reason"
        raise ToolError(
            f"the model endpoint ended its stream before the answer was finished ({how}, {chunks} chunks in)"
        )
    return {"text": "".join(pieces), "usage": usage, "finish_reason": finish, "chunks": chunks}


async def _complete(
    messages: list[dict[str, str]], *, max_tokens: int, temperature: float, language: str, ctx: Context
) -> dict[str, Any]:
    cfg = settings()
    body = {
        "model": cfg["model"], "messages": messages, "stream": True, "max_tokens": max_tokens,
        "temperature": temperature, "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.monotonic()
    out = await _stream(body, cfg, ctx, started + cfg["timeout_s"])
    duration = time.monotonic() - started
    usage = out["usage"]
    completion = int(usage.get("completion_tokens") or out["chunks"])
    return {
        "code": extract_code(out["text"]),
        "text": out["text"],
        "language": language,
        "model": cfg["model"],
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": completion,
            "total_tokens": usage.get("total_tokens"),
        },
        "finish_reason": out["finish_reason"],
        "duration_s": round(duration, 3),
        "tokens_per_s": round(completion / duration, 2) if duration > 0 else None,
    }


@mcp.tool()
async def generate_code(
    prompt: str,
    ctx: Context,
    language: str = "python",
    files: list[str] | None = None,
    max_tokens: int = 512,
    temperature: float = 0.2,
) -> dict[str, Any]:
    """Write code for `prompt` in `language`, with `files` of the workspace as context."""
    if not prompt.strip():
        raise ToolError("prompt is empty")
    context = read_files(files or [], root=Path.cwd(), max_bytes=settings()["max_file_bytes"])
    system = f"You are a careful {language} programmer. Answer with the code in one fenced block."
    user = prompt if not context else f"{prompt}\n\nFiles:\n{context}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return await _complete(
        messages, max_tokens=max_tokens, temperature=temperature, language=language, ctx=ctx
    )


@mcp.tool()
async def complete_code(
    prefix: str, ctx: Context, suffix: str = "", language: str = "python", max_tokens: int = 256
) -> dict[str, Any]:
    """The `language` code that goes between `prefix` and `suffix`."""
    ask = f"Complete this {language} code. Answer with only the missing code, in one fenced block."
    user = f"{ask}\n\n{prefix}<FILL>{suffix}"
    messages = [{"role": "user", "content": user}]
    return await _complete(messages, max_tokens=max_tokens, temperature=0.0, language=language, ctx=ctx)


if __name__ == "__main__":
    mcp.run("stdio")
