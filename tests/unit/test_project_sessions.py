"""workers/project_sessions.py's bookkeeping: a session handed to a call is neither the cap's nor
the idle timeout's to stop until the call releases it (a server that takes seconds to start has
no call in flight yet). The sessions here are stand-ins: what is under test is the pool's logic;
the real sessions are tests/agents/test_workspaces.py's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.config_file import ServerSpec
from workers.project_sessions import ProjectSessions


class Session:
    def __init__(self) -> None:
        self.in_flight = 0
        self.stopped = False

    async def run(self) -> None:
        await asyncio.sleep(3600)

    def stop(self) -> None:
        self.stopped = True


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self, project: str, *, owner: str | None = None) -> Path:
        path = self.root / project
        path.mkdir(parents=True, exist_ok=True)
        return path

    def home(self, project: str) -> Path:
        return self.root / ".homes" / project


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def stopped(session: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `session.stop` ran (the pool calls it on the loop)."""
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=5)
    return bool(session.stopped)


def pool(tmp_path: Path, loop: asyncio.AbstractEventLoop, **spec: Any) -> ProjectSessions:
    server = ServerSpec.model_validate({"command": "x", "perProject": True, **spec})
    make: Any = lambda *_a, **_k: Session()  # noqa: E731
    return ProjectSessions({"git": server}, Workspaces(tmp_path), loop=loop, make=make)  # type: ignore[arg-type]


def test_a_held_session_outlives_its_idle_timeout_until_released(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    p = pool(tmp_path, loop, idleTimeoutS=1)
    session = p.get("git", "alpha")
    assert p.reap_idle(now=10**9) == 0 and not stopped(session, loop)  # still starting, no call yet
    p.release("git", "alpha")
    assert p.reap_idle() == 0, "idle from the release on, not from the get"
    assert p.reap_idle(now=10**9) == 1
    assert ("git", "alpha") not in p.sessions and stopped(session, loop)


def test_the_cap_stops_only_released_sessions_and_is_enforced_again_on_release(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    p = pool(tmp_path, loop, maxProjects=1)
    alpha = p.get("git", "alpha")
    beta = p.get("git", "beta")  # past the cap while alpha is held: alpha stays
    assert set(p.sessions) == {("git", "alpha"), ("git", "beta")} and not stopped(alpha, loop)
    p.release("git", "alpha")  # now the least recently used, idle one goes
    assert set(p.sessions) == {("git", "beta")} and stopped(alpha, loop)
    p.release("git", "beta")
    assert set(p.sessions) == {("git", "beta")} and p.users == {} and not stopped(beta, loop)


def test_two_callers_of_one_session_hold_it_until_both_release(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    p = pool(tmp_path, loop, idleTimeoutS=1)
    assert p.get("git", "alpha") is p.get("git", "alpha")
    p.release("git", "alpha")
    assert p.reap_idle(now=10**9) == 0
    p.release("git", "alpha")
    assert p.reap_idle(now=10**9) == 1
