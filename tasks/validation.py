"""Checks a tool call before it is queued (and again on the worker): pure, no I/O.

Unknown server, unknown tool, arguments that are not a JSON object, nested deeper than the
limit or larger than the size limit, arguments that fail the tool's input schema, options out
of range (timeout_s, priority, countdown, eta, expires, ...): each raises a PermanentError
naming it. One caller's bad input must never reach a worker, where it could disturb a session
that other callers share.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tasks.catalog import ServerTools
from tasks.errors import (
    InvalidArgumentsError,
    InvalidOptionError,
    PayloadTooLargeError,
    UnknownServerError,
    UnknownToolError,
)

MAX_DEPTH = 64  # nesting of arrays and objects in arguments (the MCP SDK fails near 255)
MAX_TIMEOUT_S = 7 * 86_400.0
MAX_DELAY_S = 30 * 86_400.0  # countdown, or eta from now
MAX_KEY_CHARS = 1024  # idempotency_key, project_id


def nesting_depth(value: object, *, limit: int) -> int:
    """Depth of nested lists and dicts (a scalar is 0), without recursion; stops past `limit`."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


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
    depth = nesting_depth(arguments, limit=MAX_DEPTH)
    if depth > MAX_DEPTH:
        raise InvalidArgumentsError(
            f"arguments are nested more than {MAX_DEPTH} levels deep (or contain themselves)"
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


def _seconds(name: str, value: object, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < low or (low_open and seconds == low) or seconds > high:
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise InvalidOptionError(
            f"{name} must be a finite number of seconds {bound} and at most {high:g}, got {value!r}"
        )
    return seconds


def check_timeout(value: object) -> float | None:
    """`timeout_s` of a call: None (the server's callTimeoutS) or seconds in (0, 7 days]."""
    if value is None:
        return None
    return _seconds("timeout_s", value, low=0.0, high=MAX_TIMEOUT_S, low_open=True)


def check_key(name: str, value: object) -> str | None:
    """`idempotency_key` or `project_id`: None or a non-empty printable string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_CHARS or not value.isprintable():
        shown = value if not isinstance(value, str) else value[:80]
        raise InvalidOptionError(
            f"{name} must be a non-empty printable string of at most {MAX_KEY_CHARS} characters, "
            f"got {shown!r}"
        )
    return value


def check_flag(name: str, value: object, *, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be True or False, got {value!r}")
    return value


def check_publish_options(options: dict[str, Any], *, now: datetime) -> None:
    """Celery's own options of a call: priority 0-9, countdown, eta and expires in range."""
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise InvalidOptionError(
            f"priority must be an integer from 0 to 9 (Celery's range), got {priority!r}"
        )
    if options.get("countdown") is not None:
        _seconds("countdown", options["countdown"], low=0.0, high=MAX_DELAY_S, low_open=False)
    eta = options.get("eta")
    if eta is not None:
        moment = _moment("eta", eta)
        if (moment - _aware(now, moment)).total_seconds() > MAX_DELAY_S:
            raise InvalidOptionError(f"eta must be within {MAX_DELAY_S / 86400:g} days, got {eta!r}")
    expires = options.get("expires")
    if expires is not None:
        if isinstance(expires, datetime | str):
            moment = _moment("expires", expires)
            if moment <= _aware(now, moment):
                raise InvalidOptionError(f"expires is in the past ({expires!r}): the call could never run")
        else:
            _seconds("expires", expires, low=0.0, high=MAX_DELAY_S, low_open=True)


def _moment(name: str, value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidOptionError(f"{name} must be a datetime (or an ISO 8601 string), got {value!r}")


def _aware(now: datetime, like: datetime) -> datetime:
    """`now` comparable with `like` (both naive or both aware)."""
    if like.tzinfo is None:
        return now.replace(tzinfo=None)
    return now
