"""Dynamic client registration (RFC 7591) on the real gateway (gateway/auth/interactive.py,
flows.py): what it refuses (redirect URIs that could carry a code elsewhere, grant types it does
not offer, oversized or garbage bodies), its cap per source address, and Claude Code finding a
server that asks for a login. Each refusal is followed by a registration that works."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import ROOT, need
from tests.gateway.conftest import Capture, RunningGateway, assert_no_secret_logged, still_serving
from tests.gateway.logins import (
    PER_HOUR,
    Pkce,
    authorize,
    exchange,
    log_in,
    register,
    registered,
    start_login_gateway,
    tokens_of,
)

pytestmark = pytest.mark.usefixtures("captured_logs")
CLAUDE = ROOT / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="module")
def login_gw(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return start_login_gateway(gateway_factory)


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://user:pw@app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp://callback"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"grant_types": ["authorization_code", "password"]}, "invalid_client_metadata"),
        ({"scope": "tools:call:nobody/*"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({"client_name": "n" * 300}, "invalid_client_metadata"),
    ],
)
def test_registration_refuses_bad_metadata(
    login_gw: RunningGateway, meta: dict[str, Any], error: str
) -> None:
    r = register(login_gw, **meta)
    assert r.status_code == 400 and r.json()["error"] == error, r.text
    registered(login_gw, redirect_uris=["https://app.example/cb", "http://[::1]:8080/cb"])


def test_registration_refuses_oversized_and_garbage_bodies(login_gw: RunningGateway) -> None:
    r = register(login_gw, client_name="a", logo_uri="https://x.example/" + "a" * 5000)
    assert r.status_code == 413, r.text
    for body in (b"{", b"[]", b"\xff\xfe", b"null"):
        r = httpx2.post(
            f"{login_gw.base}/register", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (body, r.text)
    registered(login_gw)


def claude_mcp(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env |= {"HOME": str(home), "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    done = subprocess.run(
        [str(CLAUDE), "mcp", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def test_claude_code_sees_a_server_that_needs_a_login(login_gw: RunningGateway, tmp_path: Path) -> None:
    """`claude mcp add --transport http` then `claude mcp list` against the auth-on gateway: it
    finds our registration endpoint and asks for a login, instead of 'Incompatible auth server'."""
    need(CLAUDE.exists(), "Claude Code in node_modules (npm ci)")
    out = claude_mcp(tmp_path, "add", "--transport", "http", "agentful", login_gw.url)
    assert "agentful" in out, out
    listing = claude_mcp(tmp_path, "list")
    assert "agentful" in listing, listing
    assert "ncompatible" not in listing and "Connected" not in listing.replace("Not connected", ""), listing
    assert "authentication" in listing.lower(), listing


def test_zy_registrations_are_capped_per_source_address(login_gw: RunningGateway) -> None:
    """At most PER_HOUR registrations an hour from one address (this module's other tests count
    too), then 429 with Retry-After; logins of clients registered before still work."""
    client = registered(login_gw)["client_id"]
    refused = None
    for _ in range(PER_HOUR + 1):
        r = register(login_gw)
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 201, r.text
    assert refused is not None, f"{PER_HOUR + 1} more registrations from one address were all accepted"
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    pkce = Pkce.new()
    tokens = tokens_of(exchange(login_gw, client, log_in(login_gw, client, pkce)["code"], pkce.verifier))
    still_serving(login_gw, tokens["access_token"])


def test_zz_no_token_secret_or_password_in_any_log(captured_logs: Capture) -> None:
    assert_no_secret_logged(captured_logs, "client registration refused")


def test_unused_clients_are_forgotten_and_used_ones_kept(
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    """registration.unusedClientDays (here 3 s): a client nobody used is gone; each use starts
    its time again."""
    gw = start_login_gateway(gateway_factory, unusedClientDays=3 / 86_400)
    idle = registered(gw)["client_id"]
    busy = registered(gw)["client_id"]
    for _ in range(3):
        time.sleep(1.5)
        assert authorize(gw, busy, Pkce.new()).status_code == 302  # a use: its 5 s start again
    time.sleep(2.0)  # idle: 6.5 s unused by now, busy 2 s
    r = authorize(gw, idle, Pkce.new())
    assert r.status_code == 400 and "not found" in r.text, r.text
    assert authorize(gw, busy, Pkce.new()).status_code == 302
