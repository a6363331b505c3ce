"""Logs of every role: JSON lines (AGENTFUL_LOG_FORMAT=json) or text, with the call's context.

Each line carries timestamp, service, level, message, trace_id, task_id, server, tool, worker
(and the logger's name and the pid). The context comes from tasks.telemetry.context through a
logging.Filter on the handler, so every logger in the process gets it, Celery's and the MCP
SDK's included. Celery roles hand their logging to `configure` through Celery's own
`setup_logging` signal (tasks.telemetry.hooks), so Celery does not install its handlers too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from tasks.telemetry import context

CONTEXT_FIELDS = ("service", "trace_id", "task_id", "server", "tool", "worker")
JSON_FIELDS = ["levelname", "name", "message", *CONTEXT_FIELDS, "process"]
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s%(context)s"
_HANDLER_NAME = "agentful"


class ContextFilter(logging.Filter):
    """Puts the current call's context on every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = context.fields()
        for key, value in values.items():
            if not hasattr(record, key) or getattr(record, key) is None:
                setattr(record, key, value)
        shown = " ".join(f"{k}={values[k]}" for k in ("trace_id", "task_id") if values[k])
        record.context = f" [{shown}]" if shown else ""
        return True


def json_formatter() -> JsonFormatter:
    return JsonFormatter(
        JSON_FIELDS,
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp=True,  # ISO 8601, UTC
        reserved_attrs=[*RESERVED_ATTRS, "context"],  # the text format's suffix, not a field
    )


def configure(
    service: str,
    *,
    fmt: Literal["text", "json"],
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    logfile: str | Path | None = None,
) -> logging.Handler:
    """Make the root logger write this role's lines: one handler, replacing agentful's previous one."""
    context.set_service(service)
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler
