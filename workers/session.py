"""One persistent MCP session to one server, owned by one task on the worker's event loop.

The owner task connects, lists the tools, then waits; when the connection is lost (the server
crashed, the HTTP server went away) it reconnects with backoff. Calls run concurrently on the
live session. A call interrupted by a crash may already have taken effect: it is run again on
the new session only when that is safe (the tool says it is read-only or idempotent) or the
caller asked for it. Only a fault of the connection restarts the session every caller shares;
any other error of a call is that call's (workers/wire.py). The SDK's context managers are
entered and exited by the owner task only (they must be).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, CallToolResult, Implementation

from tasks.catalog import ServerTools, ToolSpec
from tasks.config_file import ServerSpec
from tasks.delivery import identity
from tasks.delivery.claims import LostClaim
from tasks.errors import (
    AgentfulError,
    CircuitOpenError,
    ServerCrashedError,
    ServerNotReadyError,
    ServerStartError,
    ServerUnavailableError,
    ToolTimeoutError,
    TransientError,
    UnknownToolError,
)
from tasks.policy.breaker import BreakerPolicy, BreakerState, BreakerStatus, allow, on_failure, on_success
from tasks.policy.health import HealthPolicy, HealthState, observe
from tasks.relay import RelayTarget
from tasks.telemetry.calls import set_connection
from tasks.validation import check_against_schema
from workers.relay import SessionRelay
from workers.stdio import stderr_tail, stdio_transport
from workers.wire import (
    call_error,
    describe,
    is_connection_fault,
    list_all_tools,
    protocol_error,
    request_error,
    watched,
)

log = logging.getLogger(__name__)

State = Literal["starting", "ready", "restarting", "failed", "stopped"]
CLIENT_INFO = Implementation(name="agentful-mcp", version="0.1.0")


def restart_delay_s(failures: int, *, base_s: float = 0.1, cap_s: float = 10.0) -> float:
    """Backoff before reconnect attempt number `failures` (0: right after a crash)."""
    if failures <= 0:
        return base_s
    return float(min(cap_s, base_s * 2 ** min(failures, 32)))  # the exponent capped: no overflow


class ServerSession:
    def __init__(
        self,
        name: str,
        spec: ServerSpec,
        *,
        log_dir: Path,
        on_tools: Callable[[ServerTools], Awaitable[None]] | None = None,
        worker: str = "",
        breaker_policy: BreakerPolicy | None = None,
        on_breaker: Callable[[str, BreakerStatus], None] | None = None,
        health_policy: HealthPolicy | None = None,
        wrap: list[str] | None = None,
        log_name: str | None = None,
    ) -> None:
        self.name = name
        self.wrap = wrap or []  # a command line the server runs under (unshare, setpriv)
        self.spec = spec
        self.log_path = log_dir / f"{log_name or name}.{os.getpid()}.log"
        self.on_tools = on_tools
        self.worker = worker
        self.state: State = "starting"
        self.client: Client | None = None
        self.tools: dict[str, ToolSpec] = {}
        self.last_error: str | None = None
        self.restarts = 0
        self.failures = 0
        self.in_flight = 0
        self.calls = 0
        self.errors = 0  # transport faults and timeouts; a tool's own is_error is not one
        self.latency_ms: float | None = None  # moving average of successful calls
        self.breaker = BreakerState()
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.on_breaker = on_breaker
        self.health = HealthState()
        self.health_policy = health_policy or HealthPolicy()
        self.checks = 0
        self._stopping = False
        self._lost = False
        self._wake: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self._auth: httpx2.Auth | None = None
        self.lease_s = 3.0  # workers/boot.py lease_s(): a lease older than this is checked before a call
        self.relay = SessionRelay(name) if spec.relay else None  # workers/relay.py
        self.losses = 0  # connections lost so far (a crash, a dropped HTTP server)
        self._counted_loss = -1  # the loss the breaker last counted

    # --- owner task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect after a loss; return when stop() is called."""
        self._changed = anyio.Event()
        while not self._stopping:
            self._wake = anyio.Event()
            self._lost = False
            connected = False
            try:
                # One scope spans connect and serve (the SDK's task groups must be exited in the
                # scope they were entered in); its deadline bounds the connect, then is lifted.
                with anyio.CancelScope(deadline=anyio.current_time() + self.spec.start_timeout_s) as scope:
                    async with AsyncExitStack() as stack:
                        client = await stack.enter_async_context(self._client(stack))
                        if self.relay is not None:
                            await self.relay.connected(client)
                        tools = await list_all_tools(client)
                        scope.deadline = math.inf
                        connected = True
                        self.client, self.tools, self.failures = client, tools, 0
                        self.last_error = None
                        self._set_state("ready")
                        log.info("MCP server %s ready: %d tools", self.name, len(tools))
                        await self._publish(tools)
                        await self._wake.wait()
                if scope.cancelled_caught and not connected:
                    raise TimeoutError
            except Exception as exc:
                self.failures += 1
                self.last_error = self._start_error(exc)
                log.warning("%s", self.last_error)
            self.client = None
            if self._stopping:
                break
            if self._lost:
                self.restarts += 1
                log.warning("MCP server %s: connection lost; restarting", self.name)
            self._set_state("failed" if self.failures else "restarting")
            # A fresh event: the old one was set by the loss itself, and would skip the backoff.
            self._wake = anyio.Event()
            if self._stopping:
                break
            with anyio.move_on_after(restart_delay_s(self.failures)):
                await self._wake.wait()
        self._set_state("stopped")

    def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def _set_state(self, state: State) -> None:
        set_connection(self.name, state == "ready")  # mcp_active_connections
        self.state = state
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    def _mark_lost(self, client: Client) -> None:
        """A call saw the connection die: no new call may use this client; the owner restarts."""
        if client is self.client and self._wake is not None:
            self.losses += 1
            self._lost = True
            self.client = None
            self._set_state("restarting")
            self._wake.set()

    @asynccontextmanager
    async def _client(self, stack: AsyncExitStack) -> AsyncIterator[Client]:
        if self.spec.command is not None:
            transport = stdio_transport(self.name, self.spec, self.wrap, self.log_path, stack)
        else:
            assert self.spec.url is not None
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=self.spec.headers, timeout=httpx2.Timeout(30.0, read=None), auth=self._http_auth()
                )
            )
            transport = streamable_http_client(self.spec.url, http_client=http)
        wake = self._wake
        assert wake is not None

        def on_end() -> None:
            if not self._stopping and self.client is not None:
                self.losses += 1
                self._lost = True
                self.client = None
                self._set_state("restarting")
            wake.set()

        relayed = self.relay.client_options() if self.relay is not None else {}
        async with Client(watched(transport, on_end), client_info=CLIENT_INFO, **relayed) as client:
            yield client

    def _http_auth(self) -> httpx2.Auth | None:
        """Client credentials (`oauth` in the spec): one token cache per session, kept across reconnects."""
        if self.spec.oauth is None:
            return None
        if self._auth is None:
            from workers.oauth import auth_for

            self._auth = auth_for(self.spec.oauth)
        return self._auth

    async def _publish(self, tools: dict[str, ToolSpec]) -> None:
        if self.on_tools is None:
            return
        try:
            await self.on_tools(ServerTools(self.name, tools, self.worker, time.time()))
        except Exception as exc:  # the catalog is an optimisation; the session still serves
            log.warning("could not publish the tools of %s: %s", self.name, describe(exc))

    def _start_error(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            text = f"did not connect within {self.spec.start_timeout_s} s"
        else:
            text = describe(exc)
        tail = self.stderr_tail()
        where = self.spec.url or " ".join([self.spec.command or "", *self.spec.args])
        return f"MCP server {self.name!r} ({where}) failed to start: {text}" + (
            f"; its stderr ends: {tail}" if tail else ""
        )

    def stderr_tail(self, max_bytes: int = 400) -> str:
        return "" if self.spec.command is None else stderr_tail(self.log_path, max_bytes)

    # --- callers ---------------------------------------------------------------------------

    async def ready_client(self) -> Client:
        """The live client, waiting (bounded) while the server starts or restarts."""
        if self.state == "ready" and self.client is not None:  # every call: no cancel scope needed
            return self.client
        with anyio.move_on_after(self.spec.start_timeout_s):
            while True:
                if self.state == "ready" and self.client is not None:
                    return self.client
                if self.state in ("failed", "stopped"):
                    # A command that will not start is permanent; a URL that does not answer is not.
                    error = ServerStartError if self.spec.command is not None else ServerUnavailableError
                    raise error(self.last_error or f"MCP server {self.name!r} is {self.state}")
                assert self._changed is not None
                await self._changed.wait()
        raise ServerNotReadyError(
            f"MCP server {self.name!r} did not become ready within {self.spec.start_timeout_s} s"
        )

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_s: float | None,
        meta: dict[str, Any] | None,
        progress: ProgressFnT | None = None,
        rerun: bool = False,
        still_owner: Callable[[], bool] | None = None,
        relay: RelayTarget | None = None,
    ) -> tuple[CallToolResult, int]:
        """Call a tool through this worker's circuit breaker for the server.

        Faults of the server count as failures: a crash, one that will not start, running past
        the server's own `callTimeoutS`. A timeout the caller chose (`timeout_s`) is the
        caller's bound, not the server's fault: it counts for neither breaker nor health. A
        result, even a tool's own is_error, counts as a success. While the breaker is open the
        call fails fast with CircuitOpenError (transient: Celery retries it, elsewhere).
        `rerun`: a call the server crashed under is run once more on the new session.
        """
        if self.breaker.status != "closed":
            raise CircuitOpenError(
                f"MCP server {self.name!r} on {self.worker}: circuit {self.breaker.status} after "
                f"{self.breaker_policy.threshold} failures in a row ({self.last_error or 'transport faults'})"
            )
        try:
            call = self._call(
                tool, arguments, timeout_s=timeout_s, meta=meta, progress=progress, rerun=rerun,
                still_owner=still_owner,
            )  # fmt: skip
            if self.relay is None:
                out = await call
            else:  # one call at a time: its server's questions are its caller's (workers/relay.py)
                async with self.relay.lock:
                    self.relay.current = relay
                    try:
                        out = await call
                        await self.relay.drained()
                    finally:
                        self.relay.current = None
        except ToolTimeoutError:
            if timeout_s is None:
                self._set_breaker(on_failure(self.breaker, time.time(), self.breaker_policy))
            raise
        except ServerCrashedError:
            # One crash fails every call in flight on it at once: it is one failure, not many.
            if self._counted_loss != self.losses:
                self._counted_loss = self.losses
                self._set_breaker(on_failure(self.breaker, time.time(), self.breaker_policy))
            raise
        except (TransientError, ServerStartError):
            self._set_breaker(on_failure(self.breaker, time.time(), self.breaker_policy))
            raise
        if self.breaker.failures:
            self._set_breaker(on_success(self.breaker, time.time(), self.breaker_policy))
        return out

    def _set_breaker(self, state: BreakerState) -> None:
        changed = state.status != self.breaker.status
        self.breaker = state
        if changed:
            log.warning("MCP server %s: circuit %s", self.name, state.status)
            if self.on_breaker is not None:
                self.on_breaker(self.name, state.status)

    async def watch_breaker(self, *, tick_s: float = 0.5) -> None:
        """While the breaker is open, wait out `open_s`, then let exactly one probe through."""
        while not self._stopping:
            state = self.breaker
            if state.status == "open" and state.opened_at_s is not None:
                if time.time() < state.opened_at_s + self.breaker_policy.open_s:
                    await anyio.sleep(tick_s)
                    continue
                allowed, probing = allow(state, time.time(), self.breaker_policy)
                if not allowed:
                    await anyio.sleep(tick_s)
                    continue
                self._set_breaker(probing)
                try:
                    await self.probe(self.spec.start_timeout_s)
                except Exception:
                    self._set_breaker(on_failure(self.breaker, time.time(), self.breaker_policy))
                else:
                    self._set_breaker(on_success(self.breaker, time.time(), self.breaker_policy))
            else:
                await anyio.sleep(tick_s)

    async def _call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout_s: float | None,
        meta: dict[str, Any] | None,
        progress: ProgressFnT | None,
        rerun: bool,
        still_owner: Callable[[], bool] | None,
    ) -> tuple[CallToolResult, int]:
        """Call a tool; with `rerun`, once more on a fresh session if the server crashed under it."""
        timeout = timeout_s if timeout_s is not None else self.spec.call_timeout_s
        attempts = 0
        while True:
            attempts += 1
            client = await self.ready_client()
            if tool not in self.tools:
                offered = ", ".join(sorted(self.tools))
                raise UnknownToolError(f"MCP server {self.name!r} has no tool {tool!r}; it offers: {offered}")
            check_against_schema(self.name, tool, self.tools[tool].input_schema, arguments)
            await self._check_owner(still_owner)
            self.in_flight += 1
            self.calls += 1
            started = anyio.current_time()
            try:
                with anyio.fail_after(timeout):
                    result = await client.call_tool(tool, arguments, progress_callback=progress, meta=meta)  # type: ignore[arg-type]
                self._observe_latency((anyio.current_time() - started) * 1000)
                return result, attempts
            except TimeoutError:
                if timeout_s is None:
                    self.errors += 1
                raise ToolTimeoutError(
                    f"{self.name}/{tool} did not finish within {timeout} s; the server was told to cancel it"
                ) from None
            except MCPError as exc:
                if exc.code != CONNECTION_CLOSED:
                    raise protocol_error(self.name, tool, exc) from exc
                crash: BaseException = exc
            except Exception as exc:
                if not (is_connection_fault(exc) or self.client is not client):
                    raise call_error(self.name, tool, exc) from exc  # this call's error, not the server's
                crash = exc
            finally:
                self.in_flight -= 1
            self.errors += 1
            self._mark_lost(client)
            if not rerun:
                raise ServerCrashedError(
                    f"MCP server {self.name!r} lost the connection during {tool} ({describe(crash)}); "
                    "not run again (retry_interrupted=False): it may have taken effect"
                )
            if attempts >= 2:
                raise ServerCrashedError(
                    f"MCP server {self.name!r} lost the connection during {tool} twice "
                    f"({describe(crash)}); gave up after {attempts} attempts"
                )
            log.warning("MCP server %s crashed during %s; running it again on a new session", self.name, tool)

    async def _check_owner(self, still_owner: Callable[[], bool] | None) -> None:
        """Past its heartbeat lease this worker may have been declared dead (it was paused or
        cut off): before anything is sent, ask the store whether the call is still its own."""
        if still_owner is None or identity.lease_age_s() < self.lease_s:
            return
        if not await anyio.to_thread.run_sync(still_owner):
            raise LostClaim(f"{self.worker} no longer owns this call (declared dead meanwhile); nothing sent")

    def _observe_latency(self, ms: float, weight: float = 0.1) -> None:
        self.latency_ms = ms if self.latency_ms is None else (1 - weight) * self.latency_ms + weight * ms

    async def probe(self, timeout_s: float) -> float:
        """Seconds a cheap request takes: ping where the protocol has it, else a tools listing."""
        if self.state != "ready" or self.client is None:
            raise ServerNotReadyError(self.last_error or f"MCP server {self.name!r} is {self.state}")
        client = self.client
        started = anyio.current_time()
        with anyio.fail_after(timeout_s):
            if client.protocol_version.startswith("2025") or client.protocol_version.startswith("2024"):
                await client.send_ping()
            else:
                await client.list_tools(cache_mode="bypass")
        return anyio.current_time() - started

    async def check(self, timeout_s: float) -> dict[str, object]:
        """One health check: probe, then count it towards the healthy/unhealthy thresholds."""
        out: dict[str, object] = {"state": self.state, "restarts": self.restarts}
        try:
            out["latency_ms"] = round(await self.probe(timeout_s) * 1000, 3)
            ok = True
        except Exception as exc:
            out["error"] = str(exc) or type(exc).__name__
            ok = False
        before = self.health.healthy
        self.health = observe(self.health, ok, self.health_policy)
        self.checks += 1
        if self.health.healthy != before:
            log.warning(
                "MCP server %s is now %s", self.name, "healthy" if self.health.healthy else "unhealthy"
            )
        out["healthy"] = self.health.healthy
        return out

    async def list_tools(self) -> dict[str, ToolSpec]:
        await self.ready_client()
        return self.tools

    # --- other requests (workers/requests.py: resources, prompts, completions) -------------

    async def request(self, what: str, request: Callable[[Client], Awaitable[_R]]) -> _R:
        """One request on the live session, bounded by `callTimeoutS`, its faults translated."""
        client = await self.ready_client()
        timeout = self.spec.call_timeout_s
        try:
            with anyio.fail_after(timeout):
                return await request(client)
        except TimeoutError:
            raise ToolTimeoutError(f"{self.name}: {what} did not finish within {timeout} s") from None
        except AgentfulError:
            raise
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise request_error(self.name, what, exc) from exc
            crash: BaseException = exc
        except Exception as exc:  # transport faults arrive as many types, often grouped
            if not (is_connection_fault(exc) or self.client is not client):
                raise call_error(self.name, what, exc) from exc
            crash = exc
        self._mark_lost(client)
        raise ServerCrashedError(
            f"MCP server {self.name!r} lost the connection during {what}: {describe(crash)}"
        )


_R = TypeVar("_R")
