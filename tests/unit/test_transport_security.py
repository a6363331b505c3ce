"""Which Host headers the gateway answers (DNS-rebinding protection), by bound address and config."""

from __future__ import annotations

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request

from gateway.app import transport_security


def answers(settings: object, host: str, origin: str | None = None) -> bool:
    headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    request = Request({"type": "http", "method": "POST", "headers": headers, "path": "/mcp"})
    middleware = TransportSecurityMiddleware(settings)  # type: ignore[arg-type]
    return anyio.run(middleware.validate_request, request, True) is None


def test_on_loopback_only_loopback_names() -> None:
    settings = transport_security([], "127.0.0.1")
    assert answers(settings, "127.0.0.1:8765") and answers(settings, "localhost:8765")
    assert not answers(settings, "evil.example:8765"), "a rebound DNS name is refused"


def test_bound_to_every_address_it_answers_the_names_it_is_reached_by() -> None:
    """`agentful gateway --host 0.0.0.0` (docker/compose.yaml) from a config saying 127.0.0.1:
    other hosts reach it as ctl.lab:8765, which used to get 421 Invalid Host header."""
    assert answers(transport_security([], "0.0.0.0"), "ctl.lab:8765")


def test_allowed_hosts_are_the_only_names_a_public_gateway_answers() -> None:
    settings = transport_security(["mcp.example.com:*"], "0.0.0.0")
    assert answers(settings, "mcp.example.com:443") and answers(settings, "127.0.0.1:8765")
    assert answers(settings, "mcp.example.com:443", origin="https://mcp.example.com:443")
    assert not answers(settings, "other.example:443")
    assert not answers(settings, "mcp.example.com:443", origin="https://evil.example:443")
