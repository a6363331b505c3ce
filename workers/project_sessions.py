"""Per-project sessions: one session of a `perProject` server for each project on this host.

A per-project server (Claude Code's `claude mcp serve`, a filesystem server rooted at the
project...) keeps state per session and may read and write the project's files: one caller's
project must never see another's. So its sessions are keyed by (server, project), each started
on the project's first call here, in the project's workspace (workers/workspaces.py), with
`{project}`, `{workspace}` and `{home}` filled into its cwd, args and env; at most `maxProjects`
live at once (the least recently used idle one stops first) and one idle for `idleTimeoutS`
stops. With `isolation`, the server runs without a network (`unshare -n`) and/or as its own OS
user (`setpriv`), the workspace and home made that user's alone (mode 0700).

The server's tools come from one session started at boot in an empty scratch directory, so the
catalog (and `.delay()`'s checks) know them before any project calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pwd
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.catalog import ToolSpec
from tasks.config_file import ServerSpec
from tasks.config_projects import IsolationSection
from tasks.errors import InvalidOptionError, ServerStartError
from workers.session import ServerSession
from workers.workspaces import Workspaces

log = logging.getLogger(__name__)
CATALOG_PROJECT = "_catalog"


def fill(spec: ServerSpec, **values: str) -> ServerSpec:
    """`spec` with {project}, {workspace} and {home} filled into its cwd, args and env."""

    def sub(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    return spec.model_copy(
        update={
            "cwd": sub(spec.cwd) if spec.cwd else values.get("workspace"),
            "args": [sub(a) for a in spec.args],
            "env": {k: sub(v) for k, v in spec.env.items()},
        }
    )


def isolation_wrap_for(iso: IsolationSection | None, project: str) -> tuple[list[str], str | None]:
    """The command line a per-project process (server, agent run) runs under, and its OS user."""
    if iso is None:
        return [], None
    wrap: list[str] = []
    if not iso.network:
        if shutil.which("unshare") is None:
            raise ServerStartError("isolation.network false needs unshare (util-linux) on this host")
        wrap += ["unshare", "--net", "--"]
    user = iso.user.replace("{project}", project) if iso.user else None
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError as exc:
            raise ServerStartError(
                f"isolation.user {user!r} is not a user on this host (useradd {user})"
            ) from exc
        # The death signal is cleared when a process's user changes: setpriv sets it again, after.
        wrap += [
            "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--pdeathsig", "KILL", "--",
        ]  # fmt: skip
    return wrap, user


class ProjectSessions:
    """The per-project sessions of one worker process (used from task threads; the sessions
    themselves run on the hub's event loop)."""

    def __init__(
        self,
        specs: dict[str, ServerSpec],
        workspaces: Workspaces,
        *,
        loop: asyncio.AbstractEventLoop,
        make: Callable[..., ServerSession],
    ) -> None:
        self.specs = specs
        self.workspaces = workspaces
        self._loop = loop
        self._make = make
        self._lock = threading.Lock()
        self.sessions: OrderedDict[tuple[str, str], ServerSession] = OrderedDict()
        self._owners: dict[tuple[str, str], concurrent.futures.Future[None]] = {}
        self.last_used: dict[tuple[str, str], float] = {}
        # Calls that hold a session, from `get` to `release`: a session handed out is not idle,
        # even while it still starts (a server may take seconds) and has no call in flight yet.
        self.users: dict[tuple[str, str], int] = {}
        self.catalog: dict[str, ServerSession] = {}

    def start_catalog(self) -> None:
        """One session per server in an empty scratch directory: its tools, for the catalog."""
        for name, spec in self.specs.items():
            scratch = self.workspaces.root / ".catalog" / name
            home = self.workspaces.root / ".homes" / CATALOG_PROJECT
            for d in (scratch, home):
                d.mkdir(parents=True, exist_ok=True)
            concrete = fill(spec, project=CATALOG_PROJECT, workspace=str(scratch), home=str(home))
            session = self._make(name, concrete, publish=True, log_name=f"{name}.catalog")
            self.catalog[name] = session
            asyncio.run_coroutine_threadsafe(session.run(), self._loop)

    def tools(self, server: str) -> dict[str, ToolSpec]:
        session = self.catalog.get(server)
        return session.tools if session is not None else {}

    def get(self, server: str, project: str | None) -> ServerSession:
        """The session of `server` for `project`, started (and the workspace cloned) if needed,
        and held for the caller until its `release`: neither the cap nor the idle timeout stops it."""
        if project is None:
            raise InvalidOptionError(
                f"MCP server {server!r} runs one session per project: pass project_id "
                "(a project of the config)"
            )
        key = (server, project)
        with self._lock:
            session = self.sessions.get(key)
            if session is not None:
                self.sessions.move_to_end(key)
                self.last_used[key] = time.monotonic()
                self.users[key] = self.users.get(key, 0) + 1
                return session
        spec = self.specs[server]
        wrap, user = isolation_wrap_for(spec.isolation, project)
        workspace = self.workspaces.ensure(project, owner=user)
        home = self.workspaces.home(project)
        home.mkdir(parents=True, exist_ok=True)
        if user is not None:
            own_dir(home, user)
        concrete = fill(spec, project=project, workspace=str(workspace), home=str(home))
        session = self._make(server, concrete, publish=False, wrap=wrap, log_name=f"{server}.{project}")
        with self._lock:
            self.users[key] = self.users.get(key, 0) + 1
            existing = self.sessions.get(key)
            if existing is not None:  # another thread made it meanwhile: use that one
                return existing
            self.sessions[key] = session
            self.last_used[key] = time.monotonic()
            self._owners[key] = asyncio.run_coroutine_threadsafe(session.run(), self._loop)
            self._evict(spec.max_projects, server)
        log.info("per-project session of %s started for %s in %s", server, project, workspace)
        return session

    def release(self, server: str, project: str) -> None:
        """The caller of `get` is done with the session: its idle time starts now, and a cap
        exceeded while every session was held is enforced again."""
        key = (server, project)
        with self._lock:
            left = self.users.get(key, 0) - 1
            if left > 0:
                self.users[key] = left
            else:
                self.users.pop(key, None)
            if key in self.sessions:
                self.last_used[key] = time.monotonic()
            self._evict(self.specs[server].max_projects, server)

    def _idle(self, key: tuple[str, str]) -> bool:
        return self.users.get(key, 0) == 0 and self.sessions[key].in_flight == 0

    def _evict(self, cap: int, server: str) -> None:
        """Past the cap, stop the least recently used idle sessions of `server` (lock held)."""
        keys = [k for k in self.sessions if k[0] == server]
        for key in keys[: max(0, len(keys) - cap)]:
            if self._idle(key):
                self._stop(key, "the per-project cap (maxProjects) was reached")

    def reap_idle(self, now: float | None = None) -> int:
        """Stop the sessions idle for their server's idleTimeoutS; how many."""
        now = time.monotonic() if now is None else now
        stopped = 0
        with self._lock:
            for key in list(self.sessions):
                spec = self.specs[key[0]]
                if self._idle(key) and now - self.last_used.get(key, now) >= spec.idle_timeout_s:
                    self._stop(key, f"idle for {spec.idle_timeout_s:g} s")
                    stopped += 1
        return stopped

    def _stop(self, key: tuple[str, str], why: str) -> None:
        session = self.sessions.pop(key)
        self.last_used.pop(key, None)
        self._owners.pop(key, None)
        self._loop.call_soon_threadsafe(session.stop)
        log.info("per-project session of %s for %s stopped: %s", key[0], key[1], why)

    def all(self) -> list[ServerSession]:
        with self._lock:
            return [*self.catalog.values(), *self.sessions.values()]

    def health(self, server: str) -> dict[str, Any]:
        catalog = self.catalog.get(server)
        with self._lock:
            live = [s for (name, _), s in self.sessions.items() if name == server]
        state = catalog.state if catalog is not None else "stopped"
        return {
            "state": "per-project" if catalog is not None and catalog.tools else state,
            "tools": len(catalog.tools) if catalog is not None else 0,
            "restarts": sum(s.restarts for s in live),
            "in_flight": sum(s.in_flight for s in live),
            "calls": sum(s.calls for s in live),
            "errors": sum(s.errors for s in live),
            "sessions": len(live),
        }


def own_dir(path: Path, user: str) -> None:
    """`path` belongs to `user` alone (mode 0700)."""
    import os

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
