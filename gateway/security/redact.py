"""Secrets and tokens never reach a log: a logging.Filter that masks them in every record.

Installed on the root logger's handlers and uvicorn's by the gateway (`install()`), and on the
audit log's handler. It masks, in the formatted message and in string extras:
- `Bearer <token>` and `Basic <credentials>` (Authorization header values),
- anything shaped like a JWT (three base64url segments, the first starting `eyJ`),
- `client_secret`, `access_token`, `refresh_token`, `password`, `token` in query strings,
  form bodies and JSON (`name=value`, `"name": "value"`),
- the password of a URL (`scheme://user:password@host`).
The gateway's code does not log these in the first place; this is the net under it (a library's
debug line, an exception that quotes a request).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    (
        re.compile(
            r"(?i)(\"?\b(?:client_secret|access_token|refresh_token|id_token|password|secret|token)\b\"?"
            r"\s*[=:]\s*\"?)([^\"&\s,}]+)"
        ),
        rf"\1{MASK}",
    ),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{MASK}@"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """Rewrites the record's message (args merged in) and string extras with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and key not in ("msg", "exc_text", "name", "pathname", "filename"):
                setattr(record, key, redact(value))
        return True


_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "mcp", "httpx", "httpx2")


def install() -> RedactFilter:
    """Put one RedactFilter on every handler of the root logger and of uvicorn's and the SDK's
    loggers (a filter on a handler sees records propagated from child loggers too)."""
    shared = RedactFilter()
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(shared)
    return shared
