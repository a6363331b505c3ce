"""Resources, prompts and completions on a server's live session (MCP wire dicts).

A server without the capability offers none: its lists are empty, reading from it is the
caller's error. Each request is bounded by the server's `callTimeoutS` and its faults are
translated like a tool call's (ServerSession.request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from tasks.errors import InvalidArgumentsError
from workers.wire import wire

if TYPE_CHECKING:
    from workers.session import ServerSession


async def list_resources(session: ServerSession) -> dict[str, list[dict[str, Any]]]:
    async def run(client: Client) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"resources": [], "resource_templates": []}
        if client.server_capabilities.resources is None:
            return out
        cursor: str | None = None
        while True:
            page = await client.list_resources(cursor=cursor)
            out["resources"] += [wire(r) for r in page.resources]
            if not (cursor := page.next_cursor):
                break
        while True:
            templates = await client.list_resource_templates(cursor=cursor)
            out["resource_templates"] += [wire(t) for t in templates.resource_templates]
            if not (cursor := templates.next_cursor):
                return out

    return await session.request("resources/list", run)


async def read_resource(session: ServerSession, uri: str) -> dict[str, Any]:
    async def run(client: Client) -> dict[str, Any]:
        if client.server_capabilities.resources is None:
            raise InvalidArgumentsError(f"MCP server {session.name!r} offers no resources ({uri!r})")
        result = await client.read_resource(uri)
        return {"contents": [wire(c) for c in result.contents]}

    return await session.request(f"resources/read {uri!r}", run)


async def list_prompts(session: ServerSession) -> dict[str, list[dict[str, Any]]]:
    async def run(client: Client) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"prompts": []}
        if client.server_capabilities.prompts is None:
            return out
        cursor: str | None = None
        while True:
            page = await client.list_prompts(cursor=cursor)
            out["prompts"] += [wire(p) for p in page.prompts]
            if not (cursor := page.next_cursor):
                return out

    return await session.request("prompts/list", run)


async def get_prompt(session: ServerSession, name: str, arguments: dict[str, str] | None) -> dict[str, Any]:
    async def run(client: Client) -> dict[str, Any]:
        if client.server_capabilities.prompts is None:
            raise InvalidArgumentsError(f"MCP server {session.name!r} offers no prompts ({name!r})")
        try:
            result = await client.get_prompt(name, arguments)
        except MCPError as exc:
            # Some servers hide "unknown prompt" behind an internal error: say it plainly.
            offered = [p.name for p in (await client.list_prompts()).prompts]
            if name not in offered:
                raise InvalidArgumentsError(
                    f"MCP server {session.name!r} has no prompt {name!r}; it offers: "
                    f"{', '.join(offered) or 'none'}",
                    INVALID_PARAMS,
                ) from exc
            raise
        return {"description": result.description, "messages": [wire(m) for m in result.messages]}

    return await session.request(f"prompts/get {name!r}", run)


async def complete(
    session: ServerSession, ref: dict[str, Any], argument: dict[str, str], context: dict[str, str] | None
) -> dict[str, Any]:
    """completion/complete; a server without the completions capability offers none."""
    from mcp.types import CompleteResult, PromptReference, ResourceTemplateReference

    async def run(client: Client) -> dict[str, Any]:
        if client.server_capabilities.completions is None:
            return {"completion": {"values": []}}
        target: PromptReference | ResourceTemplateReference = (
            PromptReference.model_validate(ref, by_name=False)
            if ref.get("type") == "ref/prompt"
            else ResourceTemplateReference.model_validate(ref, by_name=False)
        )
        result: CompleteResult = await client.complete(target, argument, context)
        return wire(result)

    return await session.request(f"completion/complete {ref.get('name') or ref.get('uri')!r}", run)
