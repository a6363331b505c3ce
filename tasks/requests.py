"""Requests to one server's session besides tool calls: resources, prompts, completions.

    from tasks import list_resources, read_resource
    read_resource.delay("everything", "demo://resource/static/document/architecture.md").get(timeout=10)

Like `call_tool`, each is checked before it is queued (the server must be known, its
arguments well formed) and runs on a worker's live session of that server (workers/requests.py).
"""

from __future__ import annotations

import re
from typing import Any

from celery.result import AsyncResult

from tasks.api import CheckedTask, require_broker, require_known_server
from tasks.app import app
from tasks.contracts import get_executor
from tasks.errors import InvalidArgumentsError, UnknownServerError


class ServerRequestTask(CheckedTask):
    """A request to one server's session: the server must be known before anything is queued."""

    request_params: tuple[str, ...] = ("server",)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        bound = dict(zip(self.request_params, args or (), strict=False)) | dict(kwargs or {})
        unexpected = set(bound) - set(self.request_params)
        if unexpected or len(args or ()) > len(self.request_params):
            raise TypeError(f"{self.name} takes ({', '.join(self.request_params)}); got {sorted(bound)}")
        require_broker()
        server = bound.get("server")
        if not isinstance(server, str) or not server:
            raise UnknownServerError(f"{self.name}: server must be a server name, got {server!r}")
        require_known_server(server)
        self.check(bound)
        return self._publish(args, kwargs, task_id, **options)

    def check(self, bound: dict[str, Any]) -> None:
        """The task's own cheap checks of its arguments (raise before anything is queued)."""


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ReadResourceTask(ServerRequestTask):
    request_params = ("server", "uri")

    def check(self, bound: dict[str, Any]) -> None:
        uri = bound.get("uri")
        if not isinstance(uri, str) or not _URI_SCHEME.match(uri):
            raise InvalidArgumentsError(
                f"resource URI must be a string with a scheme (e.g. file:///x), got {uri!r}"
            )


class GetPromptTask(ServerRequestTask):
    request_params = ("server", "name", "arguments")

    def check(self, bound: dict[str, Any]) -> None:
        name, arguments = bound.get("name"), bound.get("arguments")
        if not isinstance(name, str) or not name:
            raise InvalidArgumentsError(f"prompt name must be a non-empty string, got {name!r}")
        if arguments is not None and not (
            isinstance(arguments, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in arguments.items())
        ):
            raise InvalidArgumentsError(
                f"prompt arguments must be an object of strings (dict[str, str]), got {arguments!r}"
            )


@app.task(base=ServerRequestTask, name="agentful.list_resources")
def list_resources(server: str) -> dict[str, list[dict[str, Any]]]:
    """A server's resources and resource templates: {"resources": [...], "resource_templates": [...]}."""
    return get_executor().list_resources(server)


@app.task(base=ReadResourceTask, name="agentful.read_resource")
def read_resource(server: str, uri: str) -> dict[str, Any]:
    """One resource's contents: {"contents": [...]} (text or base64 blob items)."""
    return get_executor().read_resource(server, uri)


@app.task(base=ServerRequestTask, name="agentful.list_prompts")
def list_prompts(server: str) -> dict[str, list[dict[str, Any]]]:
    """A server's prompts: {"prompts": [...]}."""
    return get_executor().list_prompts(server)


@app.task(base=GetPromptTask, name="agentful.get_prompt")
def get_prompt(server: str, name: str, arguments: dict[str, str] | None = None) -> dict[str, Any]:
    """One prompt rendered with `arguments`: {"description": ..., "messages": [...]}."""
    return get_executor().get_prompt(server, name, arguments)


class CompleteTask(ServerRequestTask):
    request_params = ("server", "ref", "argument", "context")

    def check(self, bound: dict[str, Any]) -> None:
        ref, argument = bound.get("ref"), bound.get("argument")
        if not isinstance(ref, dict) or ref.get("type") not in ("ref/prompt", "ref/resource"):
            raise InvalidArgumentsError(
                f'ref must be {{"type": "ref/prompt" | "ref/resource", ...}}, got {ref!r}'
            )
        if not (isinstance(argument, dict) and isinstance(argument.get("name"), str)):
            raise InvalidArgumentsError(f'argument must be {{"name": str, "value": str}}, got {argument!r}')


@app.task(base=CompleteTask, name="agentful.complete")
def complete(
    server: str, ref: dict[str, Any], argument: dict[str, str], context: dict[str, str] | None = None
) -> dict[str, Any]:
    """completion/complete on a server: {"completion": {"values": [...], ...}} (empty without the
    server's completions capability). `ref` and `argument` are MCP wire dicts."""
    return get_executor().complete(server, ref, argument, context)
