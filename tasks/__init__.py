"""agentful-mcp's task layer: the Celery app and the public tasks.

from tasks import call_tool, list_tools
call_tool.delay("time", "get_current_time", {"timezone": "UTC"}).get(timeout=10)
"""

from tasks.agents import run_agent
from tasks.api import call_tool, cancel_call, health_check, list_tools, ping
from tasks.app import app
from tasks.batch import call_tools
from tasks.contracts import ToolInfo, ToolResult
from tasks.requests import complete, get_prompt, list_prompts, list_resources, read_resource

__all__ = [
    "ToolInfo",
    "ToolResult",
    "app",
    "call_tool",
    "call_tools",
    "cancel_call",
    "complete",
    "get_prompt",
    "health_check",
    "list_prompts",
    "list_resources",
    "list_tools",
    "ping",
    "read_resource",
    "run_agent",
]
