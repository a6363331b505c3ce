"""How a call looks in Flower, in task events and in worker logs: `time.get_current_time(timezone='UTC')`.

Celery sends `argsrepr`/`kwargsrepr` (strings) instead of the real arguments in its task events,
which is what Flower shows. The publish path (tasks/api.py) sets them from these functions, so
a call reads as the tool it runs, and an argument that looks like a secret (by its name, or by
its value: a bearer token, a JWT, a known API key prefix) is shown as '***', and long values are
cut. The real arguments travel untouched in the message body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
MAX_VALUE_CHARS = 64  # one argument's repr
MAX_REPR_CHARS = 512  # the whole argsrepr; Celery's own cap is 1024
MAX_DEPTH = 4

SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?$|secret|token|api[-_]?key|apikey|(^|[-_])auth(orization)?([-_]|$)|credential|cookie"
    r"|session[-_]?id|private[-_]?key|signature|^key$|[-_]key$",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"^(bearer|basic)\s+\S+"  # an Authorization header value
    r"|^eyJ[\w-]{5,}\.[\w-]{5,}\."  # a JWT
    r"|^(sk|pk|rk)[-_][\w-]{12,}"  # common API key prefixes (OpenAI, Stripe, ...)
    r"|^(ghp|gho|ghu|ghs|github_pat|glpat|xox[abpr])[-_]\w{10,}"  # GitHub, GitLab, Slack
    r"|^AKIA[0-9A-Z]{16}$"  # an AWS access key id
    r"|^-----BEGIN [A-Z ]*PRIVATE KEY-----",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def is_secret_value(value: object) -> bool:
    return isinstance(value, str) and bool(SECRET_VALUE.search(value.strip()))


def masked(value: Any, depth: int = 0) -> Any:
    """`value` with every secret-looking entry (by key or by value) replaced by '***'."""
    if is_secret_value(value):
        return MASK
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and is_secret_name(k) else masked(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(v, depth + 1) for v in value]
    return value


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_repr(server: object, tool: object, arguments: object) -> str:
    """`server.tool(key=value, ...)`, secrets masked, long values cut, at most MAX_REPR_CHARS."""
    if isinstance(arguments, Mapping):
        clean = masked(arguments)
        inner = ", ".join(
            f"{k}={short_repr(v)}" if isinstance(k, str) and k.isidentifier() else f"{k!r}: {short_repr(v)}"
            for k, v in clean.items()
        )
    elif arguments is None:
        inner = ""
    else:  # not a JSON object: the worker rejects it; show what it was
        inner = short_repr(masked(arguments))
    return short_repr_text(f"{server}.{tool}({inner})")


def kwargs_repr(kwargs: Mapping[str, Any]) -> str:
    """The call's keywords that are set (project_id, timeout_s, idempotency_key), secrets masked."""
    shown = {k: v for k, v in kwargs.items() if v is not None}
    return short_repr_text(repr(masked(shown)))


def short_repr_text(text: str, limit: int = MAX_REPR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
