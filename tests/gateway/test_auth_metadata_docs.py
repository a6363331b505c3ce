"""Client ID metadata documents on the real gateway (gateway/auth/metadata_docs.py): a client
whose client_id is an https URL is read there instead of registering. The MCP SDK's own
`OAuthClientProvider(client_metadata_url=...)` logs in that way; every document that must not
be taken (another client's id, a redirect URI a code must not reach, a secret, too big, not
JSON, a redirect, missing) is refused at /authorize, and the next good one still works. The
documents are served over real TLS from our own CA (trustme), on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
import mcp
import pytest
import trustme
import uvicorn
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import free_port
from tests.gateway.conftest import Capture, MemoryTokens, RunningGateway, assert_no_secret_logged
from tests.gateway.logins import (
    REDIRECT,
    HeadlessBrowser,
    Pkce,
    authorize,
    start_login_gateway,
)

pytestmark = pytest.mark.usefixtures("captured_logs")
DOCS: dict[str, tuple[int, bytes, dict[str, str]]] = {}  # path -> (status, body, headers)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on loopback serving DOCS, its certificate from a CA of our own."""
    tmp = tmp_path_factory.mktemp("cimd-pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))

    async def serve(request: Request) -> Response:
        status, body, headers = DOCS.get(request.url.path, (404, b"not here", {}))
        return Response(body, status, headers=headers, media_type="application/json")

    app = Starlette(routes=[Route("/{path:path}", serve)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(cert_path),
            ssl_keyfile=str(key_path),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the document server did not start"
        time.sleep(0.05)
    yield f"https://127.0.0.1:{port}", ca_path
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def cimd_gw(gateway_factory: Callable[..., RunningGateway], docs: tuple[str, Path]) -> RunningGateway:
    return start_login_gateway(gateway_factory, metadataPrivateHosts=True, metadataCaFile=str(docs[1]))


def publish(base: str, name: str, **fields: Any) -> str:
    url = f"{base}/clients/{name}.json"
    doc = {
        "client_id": url,
        "client_name": name,
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
    }
    doc |= fields
    DOCS[f"/clients/{name}.json"] = (200, json.dumps(doc).encode(), {})
    return url


def test_metadata_says_documents_are_read(cimd_gw: RunningGateway) -> None:
    meta = httpx2.get(f"{cimd_gw.base}/.well-known/oauth-authorization-server").json()
    assert meta["client_id_metadata_document_supported"] is True


def test_sdk_client_logs_in_with_its_metadata_document_url(
    cimd_gw: RunningGateway, docs: tuple[str, Path]
) -> None:
    url = publish(docs[0], "sdk-app")
    browser = HeadlessBrowser("alice")

    async def main() -> tuple[Any, MemoryTokens]:
        storage = MemoryTokens()
        provider = OAuthClientProvider(
            server_url=cimd_gw.url,
            client_metadata=OAuthClientMetadata(redirect_uris=[REDIRECT], token_endpoint_auth_method="none"),  # type: ignore[list-item]
            storage=storage,
            redirect_handler=browser.redirect_handler,
            callback_handler=browser.callback_handler,
            client_metadata_url=url,
        )
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as http,
            mcp.Client(streamable_http_client(cimd_gw.url, http_client=http)) as c,
        ):
            return await c.call_tool("time__get_current_time", {"timezone": "UTC"}), storage

    result, storage = anyio.run(main)
    assert result.is_error is False
    assert storage.info is not None and storage.info.client_id == url  # no registration: the URL is the id
    assert storage.tokens is not None and storage.tokens.refresh_token


@pytest.mark.parametrize(
    ("name", "fields", "raw"),
    [
        ("other-id", {"client_id": "https://elsewhere.example/app.json"}, None),
        ("evil-redirect", {"redirect_uris": ["http://evil.example/cb"]}, None),
        ("no-redirects", {"redirect_uris": []}, None),
        ("wants-secret", {"token_endpoint_auth_method": "client_secret_basic"}, None),
        ("password-grant", {"grant_types": ["authorization_code", "password"]}, None),
        ("long-name", {"client_name": "n" * 300}, None),
        ("not-json", {}, (200, b"<html>hi</html>", {})),
        ("an-array", {}, (200, b"[]", {})),
        ("too-big", {"logo_uri": "https://x.example/" + "a" * 20_000}, None),
        ("moved", {}, (302, b"", {"location": "/clients/sdk-app.json"})),
        ("gone", {}, (404, b"{}", {})),
    ],
)
def test_documents_that_must_not_be_taken_are_refused(
    cimd_gw: RunningGateway, docs: tuple[str, Path], name: str, fields: dict[str, Any], raw: Any
) -> None:
    url = publish(docs[0], name, **fields)
    if raw is not None:
        DOCS[f"/clients/{name}.json"] = raw
    r = authorize(cimd_gw, url, Pkce.new())
    assert r.status_code == 400 and "location" not in r.headers, (name, r.status_code, r.text)
    good = publish(docs[0], f"good-after-{name}")
    r = authorize(cimd_gw, good, Pkce.new())
    assert r.status_code == 302 and "/login?request=" in r.headers["location"], r.text


def test_plain_http_or_root_urls_are_not_metadata_documents(
    cimd_gw: RunningGateway, docs: tuple[str, Path]
) -> None:
    for client_id in (docs[0].replace("https", "http") + "/clients/x.json", docs[0] + "/"):
        r = httpx2.get(
            f"{cimd_gw.base}/authorize?"
            + urlencode(
                {"response_type": "code", "client_id": client_id, "code_challenge": Pkce.new().challenge}
            )
        )
        assert r.status_code == 400 and "location" not in r.headers, (client_id, r.text)


def test_zz_no_token_secret_or_password_in_any_log(captured_logs: Capture) -> None:
    assert_no_secret_logged(captured_logs, "client id metadata document refused")
