"""The gateway over TLS: 1.3 only, and mTLS against a configured CA. Our own CA (trustme)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp
import pytest
import trustme
from mcp.client.streamable_http import streamable_http_client

from tests.gateway.conftest import RunningGateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gateway-pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ci-bot@agents.example")
    stranger = other_ca.issue_cert("stranger@elsewhere.example")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }
    paths = {name: tmp / f"{name}.pem" for name in files}
    for name, blob in files.items():
        blob.write_to_path(str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def tls_gateway(gateway_factory: Callable[..., RunningGateway], pki: dict[str, Path]) -> RunningGateway:
    tls = {"certFile": str(pki["server_cert"]), "keyFile": str(pki["server_key"])}
    gw = gateway_factory({"tls": tls})
    assert gw.base.startswith("https://")
    return gw


@pytest.fixture(scope="module")
def mtls_gateway(gateway_factory: Callable[..., RunningGateway], pki: dict[str, Path]) -> RunningGateway:
    tls = {
        "certFile": str(pki["server_cert"]),
        "keyFile": str(pki["server_key"]),
        "clientCaFile": str(pki["ca"]),
    }
    gw = gateway_factory({"tls": tls})
    gw.wait_for_tools("time__get_current_time")
    return gw


def client_context(pki: dict[str, Path], *, cert: str | None = None, **versions: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert is not None:
        ctx.load_cert_chain(str(pki[f"{cert}_cert"]), str(pki[f"{cert}_key"]))
    for attr, value in versions.items():
        setattr(ctx, attr, value)
    return ctx


def handshake(gw: RunningGateway, ctx: ssl.SSLContext) -> str:
    """A raw TLS connection: the negotiated version, after one HTTP request went through."""
    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        version = str(tls.version())
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(1024)
        # With TLS 1.3 the server checks a client certificate after the client's Finished:
        # a refusal arrives as an alert on the first read, not in wrap_socket.
        assert reply.startswith(b"HTTP/1.1 "), reply
        return version


def test_tls13_handshake(tls_gateway: RunningGateway, pki: dict[str, Path]) -> None:
    assert handshake(tls_gateway, client_context(pki)) == "TLSv1.3"
    response = httpx2.get(f"{tls_gateway.base}/healthz", verify=client_context(pki), timeout=10)
    assert response.status_code == 200, response.text


def test_tls12_only_client_is_refused(tls_gateway: RunningGateway, pki: dict[str, Path]) -> None:
    ctx = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    # asyncio's TLS server drops the connection without an alert: the client sees EOF in the
    # handshake (with an alert it would say "protocol version"); either way no TLS 1.2 session.
    with pytest.raises(ssl.SSLError, match=r"(?i)EOF occurred|protocol version|unsupported protocol"):
        handshake(tls_gateway, ctx)
    # The gateway keeps serving TLS 1.3 after refusing it.
    assert handshake(tls_gateway, client_context(pki)) == "TLSv1.3"


def test_plain_http_to_the_tls_port_gets_no_answer(tls_gateway: RunningGateway) -> None:
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"http://127.0.0.1:{tls_gateway.port}/healthz", timeout=10)


def test_mtls_with_a_client_certificate_of_the_ca(mtls_gateway: RunningGateway, pki: dict[str, Path]) -> None:
    assert handshake(mtls_gateway, client_context(pki, cert="client")) == "TLSv1.3"


@pytest.mark.parametrize("cert", [None, "stranger"], ids=["no-client-cert", "cert-of-another-ca"])
def test_mtls_refuses(mtls_gateway: RunningGateway, pki: dict[str, Path], cert: str | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        handshake(mtls_gateway, client_context(pki, cert=cert))
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{mtls_gateway.base}/healthz", verify=client_context(pki, cert=cert), timeout=10)
    # Still serving the clients it trusts.
    assert handshake(mtls_gateway, client_context(pki, cert="client")) == "TLSv1.3"


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
def test_mcp_client_calls_a_tool_over_mtls(
    mtls_gateway: RunningGateway, pki: dict[str, Path], mode: str
) -> None:
    async def call() -> Any:
        async with httpx2.AsyncClient(verify=client_context(pki, cert="client"), timeout=30) as http:
            transport = streamable_http_client(mtls_gateway.url, http_client=http)
            async with mcp.Client(transport, mode=mode) as client:
                return await client.call_tool("time__get_current_time", {"timezone": "UTC"})

    result = anyio.run(call)
    assert not result.is_error, result
    assert json.loads(result.content[0].text)["timezone"] == "UTC"
