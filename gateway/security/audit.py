"""The audit log: every tool call through the gateway as one JSON line.

    {"ts": "2026-11-24T12:00:00.123456+00:00", "event": "tools/call", "client_id": "ci-bot",
     "server": "git", "tool": "git_status", "outcome": "ok", "ok": true, "duration_ms": 12.3,
     "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}

`outcome` is one of OUTCOMES, `ok` is false for every failed call; `error` (when given) is the
exception's class name. The
arguments, the result and any message text are never written: they may hold secrets. The line
also passes the RedactFilter, as a net.

`configure(section, data_dir)` opens the file once per process (the gateway calls it at start);
`record(...)` appends a line. A WatchedFileHandler: logrotate may move the file, the next line
reopens it. Lines are appended with O_APPEND, so replicas sharing a file do not interleave.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Final

from pythonjsonlogger.json import JsonFormatter

from gateway.security.redact import RedactFilter
from tasks.config_gateway import GatewayAuditSection

# What the gateway records (gateway/server.py): "ok" is a call whose result came back without
# `is_error`; "tool_error" the tool's own error result; "failed" a call that got no result (bad
# arguments, unknown tool, cluster unavailable, timeout: `error` says which); "denied" a call the
# caller's scopes do not allow; "cancelled" one the client cancelled. All but "ok" are failures.
OUTCOMES: Final = frozenset({"ok", "tool_error", "failed", "denied", "cancelled"})
FIELDS: Final = ("event", "client_id", "server", "tool", "outcome", "ok", "duration_ms", "trace_id", "error")

_logger = logging.getLogger("agentful.audit")
_logger.propagate = False  # its own file only: audit lines do not go to the process's log
_logger.setLevel(logging.INFO)
_HANDLER_NAME = "agentful-audit"


def audit_path(section: GatewayAuditSection, data_dir: Path) -> Path:
    return Path(section.path).expanduser() if section.path else data_dir / "logs" / "audit.jsonl"


def configure(section: GatewayAuditSection, data_dir: Path) -> Path | None:
    """Open the audit file (creating its folder); None when the audit log is off."""
    close()
    if not section.enabled:
        return None
    path = audit_path(section, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    handler.set_name(_HANDLER_NAME)
    # Only our fields: "ts" first, then FIELDS from `extra`; the logger's message is not kept.
    handler.setFormatter(JsonFormatter(["message"], timestamp="ts", rename_fields={"message": "event"}))
    handler.addFilter(RedactFilter())
    _logger.addHandler(handler)
    return path


def close() -> None:
    for handler in list(_logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            _logger.removeHandler(handler)
            handler.close()


def record(
    client_id: str | None,
    server: str,
    tool: str,
    outcome: str,
    duration_ms: float,
    trace_id: str | None = None,
    *,
    error: BaseException | str | None = None,
    event: str = "tools/call",
) -> None:
    """Append one line; a no-op until `configure` opened the file (or when the log is off)."""
    if not _logger.handlers:
        return
    fields: dict[str, object] = {
        "client_id": client_id or "anonymous",
        "server": server,
        "tool": tool,
        "outcome": outcome,
        "ok": outcome == "ok",
        "duration_ms": round(float(duration_ms), 3),
        "trace_id": trace_id,
    }
    if error is not None:
        fields["error"] = error if isinstance(error, str) else type(error).__name__
    _logger.info(event, extra=fields)
