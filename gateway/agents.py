"""Agent runs through the gateway: the tool `agent<separator>run` (tasks/agents.py's run_agent).

It is listed while some worker runs agents (their heartbeats say `agent`), for the calling
client's project (X-Agentful-Project, the token's client, or `_meta`, as for every call).
Progress is the run's stream events; the client cancelling ends the run; the result's text is
the run's answer and its structured content the whole run (session id, turns, usage, what it
changed in the workspace).
"""

from __future__ import annotations

from typing import Any

from tasks.catalog import ServerTools, ToolSpec
from tasks.routing import AGENT_SERVER

AGENT_TOOL = "run"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "what the agent is to do"},
        "resume": {"type": "string", "description": "a session id from an earlier run, to continue it"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        "max_turns": {"type": "integer", "minimum": 1},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}
DESCRIPTION = (
    "Run Claude Code headless in your project's workspace, on the host that holds it: it can read, "
    "edit and run code there. Returns its answer, session id (pass it as `resume` to continue), "
    "turns, token usage and what it changed in the workspace."
)


def agent_catalog(enabled: bool) -> dict[str, ServerTools]:
    """The synthetic catalog entry of agent runs (empty when no worker could run them)."""
    if not enabled:
        return {}
    return {
        AGENT_SERVER: ServerTools(
            AGENT_SERVER, {AGENT_TOOL: ToolSpec(AGENT_TOOL, DESCRIPTION, SCHEMA)}, "", 0.0
        )
    }


def submit(arguments: dict[str, Any] | None, project: str | None, task_id: str) -> None:
    """Queue the run (its checks first: raises before anything is queued)."""
    from tasks.agents import run_agent

    args = dict(arguments or {})
    prompt = args.pop("prompt", None)
    run_agent.apply_async((prompt,), {"project_id": project, **args}, task_id=task_id)


def as_call_result(value: dict[str, Any]) -> dict[str, Any]:
    """A run's result as CallToolResult fields."""
    text = str(value.get("result") or "")
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": value,
        "isError": bool(value.get("is_error")),
    }
