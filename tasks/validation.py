"""Checks a tool call before it is queued (and again on the worker): pure, no I/O.

Unknown server, unknown tool, arguments that are not a JSON object, arguments over the size
limit, arguments that fail the tool's input schema: each raises a PermanentError naming it.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tasks.catalog import ServerTools
from tasks.errors import InvalidArgumentsError, PayloadTooLargeError, UnknownServerError, UnknownToolError


def encoded_size(arguments: dict[str, Any]) -> int:
    """Bytes of the arguments as JSON: what travels through the broker."""
    return len(json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


def check_arguments_shape(arguments: object, *, max_bytes: int) -> dict[str, Any]:
    """Arguments must be a JSON object (dict with str keys) no larger than max_bytes."""
    if arguments is None:
        return {}
    if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
        raise InvalidArgumentsError(
            f"arguments must be a JSON object (a dict with string keys), got {type(arguments).__name__}"
        )
    try:
        size = encoded_size(arguments)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentsError(f"arguments are not JSON-serialisable: {exc}") from exc
    if size > max_bytes:
        raise PayloadTooLargeError(f"arguments are {size} bytes as JSON; the limit is {max_bytes} bytes")
    return arguments


_validators: dict[int, tuple[dict[str, Any], Draft202012Validator | None]] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator | None:
    """A compiled validator per schema object (tool listings are immutable once published)."""
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    try:
        Draft202012Validator.check_schema(schema)
        validator: Draft202012Validator | None = Draft202012Validator(schema)
    except SchemaError:
        validator = None  # the server's own schema is broken: let the server judge the call
    if len(_validators) > 4096:
        _validators.clear()
    _validators[id(schema)] = (schema, validator)  # holding `schema` keeps its id unique
    return validator


def check_against_schema(server: str, tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    if not schema:
        return
    validator = _validator(schema)
    if validator is None:
        return
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.path) or '(arguments)'}: {e.message}" for e in errors[:5]
        )
        raise InvalidArgumentsError(f"arguments for {server}/{tool} fail its input schema: {details}")


def check_call(
    server: str,
    tool: str,
    arguments: object,
    *,
    catalog: dict[str, ServerTools],
    configured: frozenset[str],
    max_bytes: int,
) -> dict[str, Any]:
    """Validate one call; return the arguments as a dict.

    `configured` are the servers named in this process's config file. A server known to neither
    the config nor the catalog is unknown. A server that is configured but not yet in the
    catalog (no worker has connected to it yet) is accepted: its call waits in its queue.
    """
    if not isinstance(server, str) or not server:
        raise UnknownServerError(f"server must be a non-empty string, got {server!r}")
    if not isinstance(tool, str) or not tool:
        raise UnknownToolError(f"tool must be a non-empty string, got {tool!r}")
    args = check_arguments_shape(arguments, max_bytes=max_bytes)
    entry = catalog.get(server)
    if entry is None:
        if server in configured:
            return args
        known = sorted(set(catalog) | configured)
        raise UnknownServerError(
            f"unknown MCP server {server!r}; the cluster offers: {', '.join(known) or 'no servers yet'}"
        )
    spec = entry.tools.get(tool)
    if spec is None:
        raise UnknownToolError(
            f"MCP server {server!r} has no tool {tool!r}; it offers: {', '.join(sorted(entry.tools))}"
        )
    check_against_schema(server, tool, spec.input_schema, args)
    return args
