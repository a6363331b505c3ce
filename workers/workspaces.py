"""Project workspaces on this host: a clone per project under the workspaces root.

The first call for a project on a host clones it there (`git clone`, from `projects.repos` or
`projects.pattern`); project affinity then keeps its calls on this host (tasks/router.py). The
registry keeps one record per project (`agentful:project:<id>`: host, path, commit, dirty,
unpushed commits), refreshed after each call that used the workspace, for `agentful projects`.
When a project's host dies its next call lands elsewhere and is cloned afresh: what the dead
host had not pushed is recorded as lost (`lost`), not hidden.

Every failure is the caller's to read: a project id that is not a safe path segment, a project
the config does not name, a clone that fails (git's own words quoted), a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from tasks.config_projects import ProjectsSection, check_project_id
from tasks.errors import InvalidOptionError, WorkspaceError

log = logging.getLogger(__name__)
RECORD_PREFIX = "agentful:project:"
GIT_TIMEOUT_S = 300.0
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}


@dataclass(frozen=True)
class WorkspaceState:
    project: str
    node: str
    path: str
    commit: str | None
    dirty: bool
    unpushed: int | None  # commits ahead of the upstream; None without one
    updated_at: float
    moved_from: str | None = None  # the host it was re-homed from
    lost: str | None = None  # what that host had not pushed, as last seen


def _git(args: list[str], cwd: Path | None = None, timeout_s: float = GIT_TIMEOUT_S) -> str:
    # safe.directory: a workspace may belong to the project's own user (isolation.user), and git
    # refuses a repository its caller does not own.
    done = subprocess.run(
        ["git", "-c", "safe.directory=*", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout_s, check=False, env={**os.environ, **_GIT_ENV},
    )  # fmt: skip
    if done.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout.strip()


class Workspaces:
    def __init__(self, root: Path, section: ProjectsSection, *, node: str, store: redis.Redis | None) -> None:
        self.root = root
        self.section = section
        self.node = node
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._recorded_at: dict[str, float] = {}

    def path(self, project: str) -> Path:
        return self.root / check_project_id_or_refuse(project)

    def home(self, project: str) -> Path:
        """A per-project home directory (Claude Code keeps its state and config there)."""
        return self.root / ".homes" / check_project_id_or_refuse(project)

    def _lock(self, project: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project, threading.Lock())

    @contextlib.contextmanager
    def _host_lock(self, project: str) -> Iterator[None]:
        """The project's clone lock for every worker on this host (they share the root)."""
        locks = self.root / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            fd = os.open(locks / f"{project}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise WorkspaceError(f"cannot make the workspaces root {self.root}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def ensure(self, project: str, *, owner: str | None = None) -> Path:
        """The project's workspace on this host, cloned now if it is not here yet."""
        path = self.path(project)
        source = self.section.source(project)
        if source is None:
            known = ", ".join(sorted(self.section.repos)) or "none"
            raise InvalidOptionError(
                f"project {project!r} is not in the config's projects (repos: {known}"
                + (f"; pattern: {self.section.pattern.match}" if self.section.pattern else "")
                + ")"
            )
        if (path / ".git").is_dir():  # a clone is renamed into place whole: this one is complete
            return path
        with self._lock(project), self._host_lock(project):
            if (path / ".git").is_dir():  # another worker on this host cloned it meanwhile
                return path
            previous = self.read(project)
            partial = path.with_name(f".{project}.cloning")
            shutil.rmtree(partial, ignore_errors=True)
            args = [
                "clone",
                "--quiet",
                *(["--branch", source.branch] if source.branch else []),
                source.git,
                str(partial),
            ]
            try:
                _git(args)
                partial.rename(path)
            except OSError as exc:
                shutil.rmtree(partial, ignore_errors=True)
                if exc.errno == errno.ENOSPC:
                    raise WorkspaceError(
                        f"no space left on device for the workspace of {project!r} under {self.root}"
                    ) from exc
                raise WorkspaceError(f"cannot make the workspace of {project!r}: {exc}") from exc
            except (WorkspaceError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(partial, ignore_errors=True)
                text = str(exc)
                if "No space left" in text:
                    raise WorkspaceError(
                        f"no space left on device for the workspace of {project!r} under {self.root}"
                    ) from exc
                raise WorkspaceError(f"cannot clone project {project!r} from {source.git}: {text}") from exc
            if owner is not None:
                _chown_tree(path, owner)
            log.info("workspace of %s cloned from %s into %s", project, source.git, path)
            self.record(project, previous=previous)
            return path

    def state(self, project: str, *, previous: WorkspaceState | None = None) -> WorkspaceState:
        path = self.path(project)
        commit = _git(["rev-parse", "HEAD"], cwd=path) if (path / ".git").is_dir() else None
        dirty = bool(_git(["status", "--porcelain"], cwd=path)) if commit else False
        try:
            unpushed: int | None = (
                int(_git(["rev-list", "--count", "@{upstream}..HEAD"], cwd=path)) if commit else None
            )
        except WorkspaceError:
            unpushed = None
        moved_from = lost = None
        if previous is not None and previous.node != self.node:
            moved_from = previous.node
            parts = []
            if previous.dirty:
                parts.append("uncommitted changes")
            if previous.unpushed:
                parts.append(f"{previous.unpushed} unpushed commit(s) up to {previous.commit}")
            lost = " and ".join(parts) or None
        elif previous is not None:
            moved_from, lost = previous.moved_from, previous.lost
        return WorkspaceState(
            project, self.node, str(path), commit, dirty, unpushed, time.time(), moved_from, lost
        )

    def record(self, project: str, *, previous: WorkspaceState | None = None) -> WorkspaceState:
        """Refresh the project's record in the registry (best effort: the call goes on without)."""
        state = self.state(project, previous=previous if previous is not None else self.read(project))
        if state.moved_from and state.lost:
            log.warning(
                "project %s moved here from %s; lost there: %s", project, state.moved_from, state.lost
            )
        if self.store is not None:
            try:
                self.store.set(RECORD_PREFIX + project, json.dumps(asdict(state)))
            except redis.RedisError as exc:
                log.warning("could not record the workspace of %s: %s", project, exc)
        return state

    def touched(self, project: str, *, every_s: float = 2.0) -> None:
        """A call used the workspace: refresh its record, at most every `every_s`, off the
        caller's thread (a `git status` per call would cost every caller)."""
        now = time.monotonic()
        with self._guard:
            if now - self._recorded_at.get(project, float("-inf")) < every_s:
                return
            self._recorded_at[project] = now

        def refresh() -> None:
            try:
                self.record(project)
            except Exception as exc:  # the record is for `agentful projects`; the call is done
                log.warning("could not refresh the record of %s: %s", project, exc)

        threading.Thread(target=refresh, name="agentful-workspace-record", daemon=True).start()

    def read(self, project: str) -> WorkspaceState | None:
        return read_record(self.store, project) if self.store is not None else None


def check_project_id_or_refuse(project: object) -> str:
    try:
        return check_project_id(project)
    except ValueError as exc:
        raise InvalidOptionError(str(exc)) from exc


def read_record(store: redis.Redis, project: str) -> WorkspaceState | None:
    raw: Any = store.get(RECORD_PREFIX + project)
    if not raw:
        return None
    try:
        return WorkspaceState(**json.loads(raw))
    except (TypeError, ValueError):
        return None


def all_records(store: redis.Redis) -> list[WorkspaceState]:
    out = []
    for key in store.scan_iter(match=RECORD_PREFIX + "*", count=500):
        name = (key.decode() if isinstance(key, bytes) else str(key)).removeprefix(RECORD_PREFIX)
        state = read_record(store, name)
        if state is not None:
            out.append(state)
    return sorted(out, key=lambda s: s.project)


def _chown_tree(path: Path, user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise WorkspaceError(
            f"isolation.user {user!r} is not a user on this host (create it: useradd {user})"
        ) from exc
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames + dirnames:
            os.lchown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
