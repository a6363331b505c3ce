"""Starting a stdio MCP server: its command (guarded, maybe wrapped for isolation) and its stderr log."""

from __future__ import annotations

import os
import shutil
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client

from tasks.config_file import ServerSpec
from tasks.errors import ServerStartError
from workers.guard import guarded_command


def stdio_transport(
    name: str, spec: ServerSpec, wrap: list[str], log_path: Path, stack: AsyncExitStack
) -> Any:
    """The SDK's stdio transport for `spec`; the server's stderr is appended to `log_path`."""
    assert spec.command is not None
    if shutil.which(spec.command, path=spec.env.get("PATH")) is None:
        raise ServerStartError(f"command {spec.command!r} not found on PATH")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    errlog: TextIO = stack.enter_context(log_path.open("a", encoding="utf-8", errors="replace"))
    errlog.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name} (pid {os.getpid()})\n")
    errlog.flush()
    if "setpriv" in wrap:  # it runs as another user: setpriv sets the death signal
        command, args = spec.command, list(spec.args)
    else:
        command, args = guarded_command(spec.command, spec.args)
    if wrap:
        command, args = wrap[0], [*wrap[1:], command, *args]
    params = StdioServerParameters(command=command, args=args, env=spec.env or None, cwd=spec.cwd)
    return stdio_client(params, errlog=errlog)


def stderr_tail(log_path: Path, max_bytes: int = 400) -> str:
    """What the server's last start wrote to stderr, on one line, at most `max_bytes`."""
    if not log_path.exists():
        return ""
    with log_path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        lines = f.read().decode(errors="replace").strip().splitlines()
    # Only what this start wrote: from the last "--- starting" marker on.
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("--- ") and " starting " in lines[i]:
            lines = lines[i + 1 :]
            break
    return " | ".join(line.strip() for line in lines if line.strip())[-max_bytes:]
