"""`run_agent`: a headless Claude Code run in a project's workspace, as a durable Celery task.

    from tasks import run_agent
    r = run_agent.delay("fix the failing test", project_id="alpha")
    for event in tasks.progress.follow(r): ...       # assistant text, tool use, tool result
    r.get(timeout=3600)   # {"result": ..., "session_id": ..., "num_turns", "usage", "workspace": {...}}
    run_agent.delay("now add a test", project_id="alpha", resume=session_id)   # same host, same session

It goes to the host that holds the project's workspace (project affinity, among the workers
with `agents.enabled`; their shared queue is `mcp.agent`). Each stream event is published as
progress. A worker that dies mid-run: the run is not run twice silently; by `agents.onWorkerLoss`
it fails with AgentRunLostError (default) or runs again on the project's new host.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Task
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from tasks.api import (
    CheckedTask,
    claims_store,
    idempotent_task_id,
    progress_publisher,
    require_broker,
    revoked_check,
)
from tasks.app import app
from tasks.config_projects import check_project_id
from tasks.contracts import get_executor
from tasks.delivery.owner import own_call
from tasks.errors import AgentRunLostError, InvalidArgumentsError, InvalidOptionError
from tasks.routing import AGENT_SERVER
from tasks.settings import get_config
from tasks.validation import check_key, check_publish_options, check_timeout

_TEXT = 300  # characters of text kept in a progress message


def summary(event: dict[str, Any]) -> str | None:
    """One line for a stream-json event, for progress; None for events not worth one."""
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return f"session {event.get('session_id')} started ({event.get('model')})"
    if kind == "system" and event.get("subtype") == "api_retry":
        wait = float(event.get("retry_delay_ms") or 0) / 1000
        tries = f"{event.get('attempt')} of {event.get('max_retries')}"
        return f"model endpoint failed ({event.get('error')}); retry {tries} in {wait:.0f} s"
    if kind in ("assistant", "user"):
        parts = []
        for block in (event.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text"):
                parts.append("text: " + str(block["text"])[:_TEXT])
            elif block.get("type") == "tool_use":
                parts.append(f"tool_use {block.get('name')}: {json.dumps(block.get('input'))[:_TEXT]}")
            elif block.get("type") == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                parts.append(("tool_error: " if block.get("is_error") else "tool_result: ") + text[:_TEXT])
        return "; ".join(parts) or None
    if kind == "result":
        return f"result: {event.get('subtype')} after {event.get('num_turns')} turns"
    return None


_PARAMS = ("prompt",)
_KEYWORDS = ("project_id", "resume", "timeout_s", "model", "max_turns", "idempotency_key")


def _bind(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    if len(args) > 1:
        raise TypeError(f"run_agent takes 1 positional argument ({len(args)} given)")
    bound: dict[str, Any] = dict(zip(_PARAMS, args, strict=False))
    for key, value in kwargs.items():
        if key not in _PARAMS + _KEYWORDS:
            raise TypeError(f"run_agent got an unexpected keyword argument {key!r}")
        bound[key] = value
    return bound


def check_run(bound: dict[str, Any], *, max_prompt_bytes: int) -> None:
    """Everything about a run, checked before it is queued."""
    prompt = bound.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidArgumentsError("prompt must be a non-empty string")
    size = len(prompt.encode())
    if size > max_prompt_bytes:
        raise InvalidArgumentsError(
            f"prompt is {size} bytes; the limit (agents.maxPromptBytes) is {max_prompt_bytes}"
        )
    try:
        check_project_id(bound.get("project_id"))
    except ValueError as exc:
        raise InvalidOptionError(f"run_agent needs project_id: {exc}") from exc
    bound["timeout_s"] = check_timeout(bound.get("timeout_s"))
    for name in ("resume", "model", "idempotency_key"):
        bound[name] = check_key(name, bound.get(name))
    turns = bound.get("max_turns")
    if turns is not None and (isinstance(turns, bool) or not isinstance(turns, int) or turns < 1):
        raise InvalidOptionError(f"max_turns must be a positive integer, got {turns!r}")


class RunAgentTask(CheckedTask):
    def server_of(self, args: Any, kwargs: Any) -> object:
        return AGENT_SERVER  # a dead worker's runs go to `mcp.agent`

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        bound = _bind(args or (), dict(kwargs or {}))
        config = get_config()
        check_run(bound, max_prompt_bytes=config.agents.max_prompt_bytes)
        from datetime import UTC, datetime

        check_publish_options(options, now=datetime.now(UTC))
        require_broker()
        if bound.get("idempotency_key"):
            task_id = idempotent_task_id("agent:" + str(bound["idempotency_key"]))
        prompt = bound.pop("prompt")
        bound = {k: v for k, v in bound.items() if v is not None}
        options.setdefault("argsrepr", repr(prompt[:80]))
        return self._publish((prompt,), bound, task_id, **options)


@app.task(base=RunAgentTask, bind=True, name="agentful.run_agent")
def run_agent(
    self: Task,
    prompt: str,
    *,
    project_id: str,
    resume: str | None = None,
    timeout_s: float | None = None,
    model: str | None = None,
    max_turns: int | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Run `claude -p prompt` in the project's workspace; its stream events are progress."""
    claim = own_call(self, claims_store())
    if claim is not None and claim.attempt > 1 and get_config().agents.on_worker_loss == "fail":
        raise AgentRunLostError(
            f"the worker running this agent run in {project_id!r} died mid-run (attempt {claim.attempt}); "
            "by policy it is not run again (agents.onWorkerLoss: restart runs it again); see the "
            "project's workspace for what it changed"
        )
    publish = progress_publisher(self.request.id)
    count = [0]

    def on_event(event: dict[str, Any]) -> None:
        text = summary(event)
        if text is not None and publish is not None:
            count[0] += 1
            publish(float(count[0]), None, text)

    try:
        result: dict[str, Any] = get_executor().run_agent(  # type: ignore[attr-defined]
            project_id, prompt, resume=resume, timeout_s=timeout_s, model=model, max_turns=max_turns,
            on_event=on_event, cancelled=revoked_check(self.request.id),
        )  # fmt: skip
    except TaskRevokedError as exc:
        self.backend.mark_as_revoked(self.request.id, reason=str(exc), request=self.request)
        from celery.exceptions import Ignore

        raise Ignore(str(exc)) from exc
    result["worker"] = str(self.request.hostname or "")
    result["attempt"] = claim.attempt if claim is not None else self.request.retries + 1
    return result


__all__ = ["AGENT_SERVER", "run_agent"]
