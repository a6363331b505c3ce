"""Launch an MCP server so that it dies with the worker process that started it.

A stdio server normally exits on stdin EOF, but a hung or badly written one may not, and the
MCP SDK starts servers in their own session (so a kill of the worker's process group misses
them). On Linux we exec the server through a tiny launcher that sets PR_SET_PDEATHSIG: the
kernel SIGKILLs the server when the thread that spawned it (the worker's event-loop thread)
dies, even by SIGKILL. The launcher adds one `python -S` start (~15 ms) per server start.
"""

from __future__ import annotations

import os
import sys

# Runs as `python -S -c GUARD_SOURCE <parent-pid> <command> <args...>`.
GUARD_SOURCE = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("agentful guard: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the worker died before the signal was armed
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.exit(f"agentful: cannot start MCP server {sys.argv[2]!r}: {exc.strerror}")
"""


def guarded_command(command: str, args: list[str]) -> tuple[str, list[str]]:
    """(command, args) that run `command args` under the death-signal guard where supported."""
    if not sys.platform.startswith("linux"):
        return command, args
    return sys.executable, ["-S", "-c", GUARD_SOURCE, str(os.getpid()), command, *args]
