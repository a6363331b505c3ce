"""A worker process's MCP runtime: one asyncio loop thread that owns every server session.

Celery runs tasks on its pool's threads or processes; each process has one SessionHub, made
after fork. Tasks hand calls to the hub's loop and wait on a future with a bound, so many calls
can be in flight on one session at once (thread pool) and the process-init hook never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
from celery.exceptions import TaskRevokedError

from tasks.catalog import CatalogStore, ServerTools
from tasks.config_file import ConfigFile, ServerSpec
from tasks.contracts import BatchCall, ProgressFn, ToolInfo
from tasks.errors import ConfigError, ToolTimeoutError, UnknownServerError
from tasks.policy.breaker import BreakerPolicy, BreakerStatus
from tasks.policy.health import HealthPolicy
from tasks.registry import ServerHealth
from tasks.relay import RelayTarget
from tasks.telemetry.calls import observe_call
from tasks.telemetry.context import CallContext
from workers import requests
from workers.agents import AgentRunner
from workers.project_sessions import ProjectSessions
from workers.session import ServerSession
from workers.wire import wire
from workers.workspaces import Workspaces

log = logging.getLogger(__name__)
T = TypeVar("T")

# How much longer than a call's own timeout a task waits for the loop before giving up:
# covers a restart (backoff + reconnect) inside the call.
_WAIT_MARGIN_S = 5.0
# How often a waiting task thread looks whether its call was revoked. Celery's revoke only adds
# the id to `celery.worker.state.revoked` (a set without hooks) for a running task, so the
# waiting thread looks there; a call that finishes sooner never waits this long.
_CANCEL_POLL_S = 0.1
_DONE = object()


class SessionHub:
    def __init__(
        self,
        config: ConfigFile,
        servers: list[str],
        *,
        log_dir: Any,
        store: CatalogStore | None,
        worker: str,
        on_breaker: Callable[[str, BreakerStatus], None] | None = None,
        lease_s: float = 2.0,
        workspaces: Workspaces | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.config = config
        self.store = store
        self.worker = worker
        self.log_dir = log_dir
        self.on_breaker = on_breaker
        self.lease_s = lease_s
        shared = [n for n in servers if not config.servers[n].per_project]
        self.sessions = {name: self._make(name, config.servers[name]) for name in shared}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="agentful-mcp-loop", daemon=True)
        self._started = threading.Event()
        self._owners: list[concurrent.futures.Future[None]] = []
        per_project = {n: config.servers[n] for n in servers if config.servers[n].per_project}
        self.projects: ProjectSessions | None = None
        self.workspaces = workspaces
        self._agents: AgentRunner | None = None
        if per_project:
            if workspaces is None:
                raise ConfigError(
                    "per-project servers need a workspaces root (projects.root or AGENTFUL_WORKSPACES)"
                )
            self.projects = ProjectSessions(per_project, workspaces, loop=self._loop, make=self._make)

    def _make(
        self,
        name: str,
        spec: ServerSpec,
        *,
        publish: bool = True,
        wrap: list[str] | None = None,
        log_name: str | None = None,
    ) -> ServerSession:
        config = self.config
        session = ServerSession(
            name,
            spec,
            log_dir=self.log_dir,
            on_tools=self._publish if publish else None,
            worker=self.worker,
            breaker_policy=BreakerPolicy(
                threshold=config.mcp.client.circuit_breaker.threshold,
                open_s=config.mcp.client.circuit_breaker.timeout / 1000,
            ),
            on_breaker=self.on_breaker if publish else None,
            health_policy=HealthPolicy.from_config(config.mcp.client.load_balancing.health_check),
            wrap=wrap,
            log_name=log_name,
        )
        session.lease_s = self.lease_s
        return session

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and schedule every session's connect; returns at once."""
        self._thread.start()
        self._started.wait(5.0)
        for session in self.sessions.values():
            self._owners.append(asyncio.run_coroutine_threadsafe(session.run(), self._loop))
            self._owners.append(asyncio.run_coroutine_threadsafe(session.watch_breaker(), self._loop))
        if self.projects is not None:
            self.projects.start_catalog()
            self._owners.append(asyncio.run_coroutine_threadsafe(self._reap_idle(), self._loop))

    async def _reap_idle(self, tick_s: float = 5.0) -> None:
        """Stop per-project sessions idle for their server's idleTimeoutS."""
        assert self.projects is not None
        while self._thread.is_alive():
            await anyio.sleep(tick_s)
            await anyio.to_thread.run_sync(self.projects.reap_idle)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._started.set)
        self._loop.run_forever()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every session (their servers exit) and the loop; bounded."""
        if not self._thread.is_alive():
            return
        every = list(self.sessions.values()) + (self.projects.all() if self.projects is not None else [])
        for session in every:
            self._loop.call_soon_threadsafe(session.stop)
        concurrent.futures.wait(self._owners, timeout=timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=1.0)

    async def _publish(self, entry: ServerTools) -> None:
        if self.store is not None:
            await anyio.to_thread.run_sync(self.store.publish, entry)

    # --- the executor API (called from task threads) ---------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], wait_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=wait_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ToolTimeoutError(f"the worker's MCP runtime did not answer within {wait_s:.1f} s") from None

    def _session(self, server: str, project: str | None = None) -> ServerSession:
        if self.projects is not None and server in self.projects.specs:
            return self.projects.get(server, project)
        session = self.sessions.get(server)
        if session is None:
            raise UnknownServerError(
                f"this worker ({self.worker}) does not run MCP server {server!r}; it runs: "
                f"{', '.join(self.sessions) or 'none'}"
            )
        return session

    def call_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_s: float | None,
        meta: dict[str, Any] | None,
        on_progress: ProgressFn | None = None,
        cancelled: Callable[[], bool] | None = None,
        still_owner: Callable[[], bool] | None = None,
        rerun: bool = False,
        project: str | None = None,
        relay: RelayTarget | None = None,
    ) -> tuple[dict[str, Any], int]:
        session = self._session(server, project)  # a per-project one is held until released
        held = project if self._per_project(server) else None
        try:
            timeout = timeout_s if timeout_s is not None else session.spec.call_timeout_s
            wait_s = 2 * timeout + session.spec.start_timeout_s + _WAIT_MARGIN_S
            inbox: queue.SimpleQueue[object] = queue.SimpleQueue()

            async def notified(progress: float, total: float | None, message: str | None) -> None:
                # No await before the put: the SDK spawns one callback per notification, in order.
                inbox.put((progress, total, message))

            async def run() -> tuple[dict[str, Any], int]:
                observed.context.apply()  # the task's trace id and log fields, on the loop's task
                result, attempts = await session.call(
                    tool,
                    arguments,
                    timeout_s=timeout_s,  # None: the server's callTimeoutS (a caller's bound: not its fault)
                    meta=observed.meta,
                    progress=notified if on_progress else None,
                    rerun=rerun,
                    still_owner=still_owner,
                    relay=relay,
                )
                return wire(result), attempts

            # Metrics, the OpenTelemetry span, and the trace id in `_meta` (tasks/telemetry/calls.py).
            with observe_call(server, tool, meta) as observed:
                if on_progress is None and cancelled is None:
                    out = self._run(run(), wait_s)
                else:
                    out = self._run_watched(run(), wait_s, inbox, on_progress, cancelled)
                observed.done(out[0])
                return out
        finally:
            self._release(server, held)

    def call_many(
        self, server: str, calls: list[BatchCall], *, project: str | None = None
    ) -> list[tuple[dict[str, Any], int, float] | BaseException]:
        session = self._session(server, project)
        held = project if self._per_project(server) else None
        captured = CallContext.capture()

        # At most `batchConcurrency` calls of this batch run at once: a server is not handed 100
        # calls by each of 16 pool threads, and the peak memory of that many calls in flight
        # (about 19 KB each in the SDK) is not kept by the worker ever after. A call's own
        # timeout starts when it runs; the wait below covers the waves.
        width = session.spec.batch_concurrency
        gate = asyncio.Semaphore(width)  # bound to the loop that first waits on it: the hub's

        async def one(call: BatchCall) -> tuple[dict[str, Any], int, float]:
            async with gate:
                started = time.perf_counter()
                with observe_call(server, call.tool, call.meta) as observed:
                    result, attempts = await session.call(
                        call.tool,
                        call.arguments,
                        timeout_s=call.timeout_s,
                        meta=observed.meta,
                        rerun=call.rerun,
                        still_owner=call.still_owner,
                    )
                    out = wire(result)
                    observed.done(out)
                    return out, attempts, round((time.perf_counter() - started) * 1000, 3)

        async def run_all() -> list[tuple[dict[str, Any], int, float] | BaseException]:
            captured.apply()  # the batch task's trace id and log fields, for every call
            return await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)

        try:
            longest = max((c.timeout_s or session.spec.call_timeout_s for c in calls), default=0.0)
            waves = -(-len(calls) // width)
            return self._run(run_all(), 2 * longest * waves + session.spec.start_timeout_s + _WAIT_MARGIN_S)
        finally:
            self._release(server, held)

    def _release(self, server: str, held: str | None) -> None:
        """A per-project session held by a call (or a batch) is given back; its workspace touched."""
        if held is not None and self.projects is not None:
            self.projects.release(server, held)
            if self.workspaces is not None:
                self.workspaces.touched(held)

    def _run_watched(
        self,
        coro: Coroutine[Any, Any, T],
        wait_s: float,
        inbox: queue.SimpleQueue[object],
        on_progress: ProgressFn | None,
        cancelled: Callable[[], bool] | None,
    ) -> T:
        """Like `_run`, and meanwhile hand progress to `on_progress` here, in order, and cancel
        the call when `cancelled()` turns true. Every progress event is handed over before the
        result is returned (the done marker is queued after them, on the loop thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.add_done_callback(lambda _: inbox.put(_DONE))
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                future.cancel()
                raise ToolTimeoutError(f"the worker's MCP runtime did not answer within {wait_s:.1f} s")
            try:
                item = inbox.get(timeout=min(remaining, _CANCEL_POLL_S) if cancelled else remaining)
            except queue.Empty:
                item = None
            if item is _DONE:
                return future.result()
            if isinstance(item, tuple) and on_progress is not None:
                on_progress(*item)
            if cancelled is not None and cancelled():
                # Cancels the call's asyncio task: the SDK sends notifications/cancelled.
                future.cancel()
                raise TaskRevokedError(
                    "the call was cancelled while running; the MCP server was told to cancel it"
                )

    def list_tools(self, server: str) -> list[ToolInfo]:
        if self.projects is not None and server in self.projects.specs:
            session = self.projects.catalog[server]
        else:
            session = self._session(server)
        tools = self._run(session.list_tools(), session.spec.start_timeout_s + _WAIT_MARGIN_S)
        return [ToolInfo(**t.to_json()) for t in tools.values()]  # type: ignore[typeddict-item]

    def _per_project(self, server: str) -> bool:
        return self.projects is not None and server in self.projects.specs

    def run_agent(self, project: str, prompt: str, **kwargs: Any) -> dict[str, Any]:
        """One headless agent run (workers/agents.py), in this task's thread."""
        if not self.config.agents.enabled or self.workspaces is None:
            raise UnknownServerError(
                f"this worker ({self.worker}) does not run agents (agents.enabled is off)"
            )
        if self._agents is None:
            self._agents = AgentRunner(self.config.agents, self.workspaces, log_dir=self.log_dir)
        result = self._agents.run(project, prompt, **kwargs)
        self.workspaces.record(project)
        return result

    def rerun_safe(self, server: str, tool: str) -> bool:
        if self.projects is not None and server in self.projects.specs:
            spec = self.projects.tools(server).get(tool)
        else:
            spec = self._session(server).tools.get(tool)
        return spec is not None and spec.rerun_safe

    def _request_wait_s(self, session: ServerSession) -> float:
        return session.spec.call_timeout_s + session.spec.start_timeout_s + _WAIT_MARGIN_S

    def list_resources(self, server: str) -> dict[str, list[dict[str, Any]]]:
        session = self._session(server)
        return self._run(requests.list_resources(session), self._request_wait_s(session))

    def read_resource(self, server: str, uri: str) -> dict[str, Any]:
        session = self._session(server)
        return self._run(requests.read_resource(session, uri), self._request_wait_s(session))

    def list_prompts(self, server: str) -> dict[str, list[dict[str, Any]]]:
        session = self._session(server)
        return self._run(requests.list_prompts(session), self._request_wait_s(session))

    def get_prompt(self, server: str, name: str, arguments: dict[str, str] | None) -> dict[str, Any]:
        session = self._session(server)
        return self._run(requests.get_prompt(session, name, arguments), self._request_wait_s(session))

    def complete(
        self, server: str, ref: dict[str, Any], argument: dict[str, str], context: dict[str, str] | None
    ) -> dict[str, Any]:
        session = self._session(server)
        return self._run(requests.complete(session, ref, argument, context), self._request_wait_s(session))

    def ready_tools(self) -> dict[str, list[ToolInfo]]:
        return {
            name: [ToolInfo(**t.to_json()) for t in s.tools.values()]  # type: ignore[typeddict-item]
            for name, s in self.sessions.items()
            if s.state == "ready"
        }

    def servers(self) -> list[str]:
        return [*self.sessions, *(self.projects.specs if self.projects is not None else [])]

    async def _check_all(self, timeout_s: float) -> dict[str, dict[str, object]]:
        results: dict[str, dict[str, object]] = {}

        async def run(name: str, session: ServerSession) -> None:
            results[name] = await session.check(timeout_s)

        async with anyio.create_task_group() as tg:
            for name, session in self.sessions.items():
                tg.start_soon(run, name, session)
        return results

    def probe(self, timeout_s: float) -> dict[str, dict[str, object]]:
        """Health-check every server now and wait for the results."""
        return self._run(self._check_all(timeout_s), timeout_s + _WAIT_MARGIN_S)

    def check_soon(self, timeout_s: float) -> None:
        """Health-check every server in the background (control commands must not block)."""
        asyncio.run_coroutine_threadsafe(self._check_all(timeout_s), self._loop)

    def health(self) -> dict[str, ServerHealth]:
        """Each session's state and counters, read without the loop (plain attribute reads)."""
        return {
            name: ServerHealth(
                state=s.state,
                tools=len(s.tools),
                restarts=s.restarts,
                in_flight=s.in_flight,
                calls=s.calls,
                errors=s.errors,
                latency_ms=None if s.latency_ms is None else round(s.latency_ms, 3),
                breaker=s.breaker.status,
                healthy=s.health.healthy,
                checks=s.checks,
            )
            for name, s in self.sessions.items()
        } | self._project_health()

    def _project_health(self) -> dict[str, ServerHealth]:
        if self.projects is None:
            return {}
        out = {}
        for name in self.projects.specs:
            h = self.projects.health(name)
            out[name] = ServerHealth(
                state=str(h["state"]), tools=int(h["tools"]), restarts=int(h["restarts"]),
                in_flight=int(h["in_flight"]), calls=int(h["calls"]), errors=int(h["errors"]),
            )  # fmt: skip
        return out
