"""The gateway's processes: an ASGI app (Streamable HTTP at /mcp, GET /healthz) and stdio.

    from gateway.app import build_app, serve
    serve(config, "127.0.0.1", 8765)            # what `agentful gateway` runs
    app = build_app(config)                     # any ASGI server; its lifespan must run

Auth (gateway/auth/), TLS, the rate limit and the audit log (gateway/security/) are imported
only when the config switches them on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.server import Gateway
from tasks.config_file import ConfigFile

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# The largest HTTP body the endpoint reads: the arguments limit (mcp.server.maxRequestBytes)
# plus room for the JSON-RPC envelope. A bigger body is answered 413 before it is parsed.
ENVELOPE_BYTES = 64 * 1024


def build_gateway(config: ConfigFile) -> Gateway:
    return Gateway(config)


LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]


def transport_security(allowed_hosts: list[str], bind: str) -> TransportSecuritySettings:
    """DNS-rebinding protection: which Host headers the gateway answers (421 otherwise).

    The SDK protects only an app bound to loopback, and then answers only loopback names: a
    gateway started with `--host 0.0.0.0` from a config that says 127.0.0.1 refused every
    other host's calls. The bound address decides here, and `gateway.allowedHosts` names the
    hosts a public gateway answers (with the loopback names, for its own health checks).
    """
    if allowed_hosts:
        hosts = [*allowed_hosts, *LOOPBACK_HOSTS]
    elif bind in ("127.0.0.1", "localhost", "::1"):
        hosts = list(LOOPBACK_HOSTS)
    else:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_app(config: ConfigFile, gateway: Gateway | None = None, *, host: str | None = None) -> Starlette:
    """The gateway as a Starlette app: MCP (Streamable HTTP, both protocol eras) at /mcp;
    `host`: the address it is bound to (default `gateway.host`)."""
    gateway = gateway or build_gateway(config)
    section = config.gateway
    from tasks.telemetry.hooks import start_gateway_telemetry
    from tasks.telemetry.metrics import asgi_app

    start_gateway_telemetry()  # JSON logs, tracing, Sentry when configured (docs/observability.md)
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz(gateway), methods=["GET"]),
        Route("/metrics", asgi_app(), methods=["GET"]),  # Prometheus (docs/metrics.md)
    ]
    auth_kwargs: dict[str, Any] = {}
    if section.auth.enabled:
        from gateway.auth.routes import auth_routes
        from gateway.auth.verifier import auth_settings, build_token_verifier

        auth_kwargs = {"token_verifier": build_token_verifier(config), "auth": auth_settings(config)}
        routes.extend(auth_routes(config))
    sdk_app = gateway.server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=section.json_response,
        max_request_body_size=config.mcp.server.max_request_bytes + ENVELOPE_BYTES,
        host=host or section.host,
        transport_security=transport_security(section.allowed_hosts, host or section.host),
        custom_starlette_routes=routes,  # type: ignore[arg-type]  # Route and Mount alike
        **auth_kwargs,
    )
    if section.auth.enabled:
        from gateway.auth.guard import install_scope_guard

        def resolve(name: str) -> tuple[str, str] | None:
            found = gateway.index.route(name)
            return None if found is None else (found[0].server, found[0].name)

        install_scope_guard(sdk_app, MCP_PATH, resolve)

    from gateway import jsonrpc, streaming

    if section.json_response:
        # JSON responses, but SSE for a request with a progressToken, or a call of a server whose
        # questions and log lines go to its client (gateway/streaming.py, gateway/relay.py).
        streaming.install(gateway.server.session_manager)
        relaying = gateway.relay_servers

        def relayed(payload: Mapping[str, Any]) -> bool:
            params = payload.get("params")
            name = (
                params.get("name")
                if payload.get("method") == "tools/call" and isinstance(params, dict)
                else None
            )
            found = gateway.index.route(name) if isinstance(name, str) and relaying else None
            return found is not None and found[0].server in relaying

        jsonrpc.install(sdk_app, MCP_PATH, functools.partial(streaming.choose, also=relayed))
    else:
        jsonrpc.install(sdk_app, MCP_PATH)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway.server.session_manager.run():
            _security_logs(section)
            await gateway.start()
            try:
                yield
            finally:
                await gateway.stop()

    middleware: list[Middleware] = list(sdk_app.user_middleware)
    if section.rate_limit.enabled:
        from gateway.security.ratelimit import RateLimitMiddleware

        # After (inside) the SDK's AuthenticationMiddleware: it sets scope["user"], so a bucket
        # is per OAuth client when a token came, else per peer address.
        middleware.append(Middleware(RateLimitMiddleware, section=section.rate_limit))
    app = Starlette(routes=list(sdk_app.routes), middleware=middleware, lifespan=lifespan)
    app.state.gateway = gateway
    return app


def _security_logs(section: Any) -> None:
    """Mask secrets in every log handler configured by now (Gateway.start opens the audit log)."""
    from gateway.security import redact

    redact.install()


def _healthz(gateway: Gateway) -> Any:
    async def healthz(request: Request) -> JSONResponse:
        ready = gateway.waiter is not None
        servers = sorted({route.server for route, _ in gateway.index.tools.values()})
        body = {
            "status": "ok" if ready else "starting",
            "tools": len(gateway.index.tools),
            "servers": servers,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return healthz


def uvicorn_config(config: ConfigFile, host: str | None = None, port: int | None = None) -> Any:
    """The uvicorn.Config of `serve` (TLS from gateway.security.tls when a certificate is set)."""
    import uvicorn

    section = config.gateway
    ssl_kwargs: dict[str, Any] = {}
    if section.tls.cert_file:
        from gateway.security.tls import uvicorn_ssl

        ssl_kwargs = uvicorn_ssl(section.tls)
    return uvicorn.Config(
        build_app(config, host=host or section.host),
        host=host or section.host,
        port=section.port if port is None else port,
        log_level="info",
        # No access log: a line per request costs more than the call's own work here, and the
        # audit log (gateway.security.audit) already records every call.
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **ssl_kwargs,
    )


def serve(config: ConfigFile, host: str | None = None, port: int | None = None) -> None:
    """Serve the gateway over Streamable HTTP until interrupted."""
    import uvicorn

    from tasks.gctune import tune
    from tasks.settings import get_settings

    server = uvicorn.Server(uvicorn_config(config, host, port))
    tune(get_settings().gc_threshold)  # everything imported and built: see tasks/gctune.py
    server.run()


def serve_stdio(config: ConfigFile) -> None:
    """Serve the gateway to one client over stdin/stdout (as a subprocess of an MCP client)."""
    from mcp.server.stdio import stdio_server

    async def main() -> None:
        gateway = build_gateway(config)
        # stdio has no bearer tokens: the caller is the local user who started this process, as
        # with any stdio MCP server, so gateway.auth applies to Streamable HTTP only.
        gateway.auth_enabled = False
        _security_logs(config.gateway)
        await gateway.start()
        try:
            async with stdio_server() as (read, write):
                await gateway.server.run(read, write, gateway.server.create_initialization_options())
        finally:
            await gateway.stop()

    anyio.run(main)
