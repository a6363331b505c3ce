"""The checks a call passes before it is queued: its parameters bound as Python binds them,
its options (timeout, keys, flags, publish options, the default expiry) and its project.

Used by `call_tool.apply_async` (tasks/api.py) and `call_tools` (tasks/batch.py) alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tasks.config_projects import check_project_id
from tasks.errors import InvalidOptionError
from tasks.relay import check_relay
from tasks.settings import get_settings
from tasks.validation import check_flag, check_key, check_publish_options, check_timeout

_CALL_PARAMS = ("server", "tool", "arguments")
_CALL_KEYWORDS = ("project_id", "timeout_s", "idempotency_key", "progress", "retry_interrupted", "relay")


def check_options(bound: dict[str, Any], options: dict[str, Any]) -> None:
    """Every option of a call checked before it is queued; `expires` defaulted (Settings)."""
    bound["timeout_s"] = check_timeout(bound.get("timeout_s"))
    for name in ("project_id", "idempotency_key"):
        bound[name] = check_key(name, bound.get(name))
    bound["progress"] = check_flag("progress", bound.get("progress", False))
    wish = check_relay(bound.get("relay"))
    bound["relay"] = wish.as_option() if wish is not None else None
    bound["retry_interrupted"] = check_flag(
        "retry_interrupted", bound.get("retry_interrupted"), optional=True
    )
    check_publish_options(options, now=datetime.now(UTC))
    default_s = get_settings().call_expires_s
    if options.get("expires") is None and default_s > 0:
        # A call nobody took within this long is dropped, not run for a caller long gone; the
        # time it was asked to wait (countdown) does not count against it.
        delay = float(options.get("countdown") or 0)
        if options.get("eta") is not None:
            delay = max(0.0, (as_utc(options["eta"]) - datetime.now(UTC)).total_seconds())
        options["expires"] = delay + default_s
    if not bound["progress"]:
        bound.pop("progress")  # the defaults: kept off the message (and off Flower's kwargs)
    for key in ("timeout_s", "project_id", "idempotency_key", "retry_interrupted", "relay"):
        if bound.get(key) is None:
            bound.pop(key, None)  # (retry_interrupted=False is no default: it is kept)


def check_project(bound: dict[str, Any], config: Any) -> None:
    """A per-project server's call needs a project, one that names a safe workspace directory."""
    spec = config.servers.get(bound.get("server"))
    if spec is None or not spec.per_project:
        return
    project = bound.get("project_id")
    if project is None:
        raise InvalidOptionError(
            f"MCP server {bound['server']!r} runs one session per project: pass project_id"
        )
    try:
        check_project_id(project)
    except ValueError as exc:
        raise InvalidOptionError(str(exc)) from exc


def as_utc(moment: Any) -> datetime:
    value = moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def bind_call(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """call_tool's parameters by name, with the same errors Python would give a bad call."""
    if len(args) > len(_CALL_PARAMS):
        raise TypeError(f"call_tool takes at most 3 positional arguments ({len(args)} given)")
    bound: dict[str, Any] = dict(zip(_CALL_PARAMS, args, strict=False))
    for key, value in kwargs.items():
        if key not in _CALL_PARAMS + _CALL_KEYWORDS:
            raise TypeError(f"call_tool got an unexpected keyword argument {key!r}")
        if key in bound:
            raise TypeError(f"call_tool got multiple values for argument {key!r}")
        bound[key] = value
    for required in ("server", "tool"):
        if required not in bound:
            raise TypeError(f"call_tool missing required argument {required!r}")
    bound.setdefault("arguments", None)
    return bound
