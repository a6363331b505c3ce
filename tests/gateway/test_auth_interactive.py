"""Interactive OAuth 2.1 on the real gateway (gateway/auth/interactive.py, login.py, flows.py):
the authorization code flow with PKCE through the login page, and refresh tokens rotated with
reuse detection, driven by the MCP SDK's own `OAuthClientProvider` and by plain HTTP for every
refusal. Every bad input is followed by a good login or call: the gateway keeps serving, and
nothing the bad request touched works afterwards. Registration: test_auth_registration.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
import mcp
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    OAuthClientMetadata,
    OAuthToken,
)

from tests.gateway.conftest import (
    Capture,
    MemoryTokens,
    RunningGateway,
    assert_no_secret_logged,
    bearer,
    listed,
    still_serving,
)
from tests.gateway.logins import (
    PASSWORDS,
    REDIRECT,
    HeadlessBrowser,
    Pkce,
    authorize,
    exchange,
    fresh_tokens,
    log_in,
    login_form,
    redirect_query,
    refresh,
    registered,
    start_login_gateway,
    submit,
    tokens_of,
)

pytestmark = pytest.mark.usefixtures("captured_logs")


@pytest.fixture(scope="module")
def login_gw(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return start_login_gateway(gateway_factory)


# -- the documents ------------------------------------------------------------------------------


def test_metadata_offers_the_code_flow_registration_and_revocation(login_gw: RunningGateway) -> None:
    meta = httpx2.get(f"{login_gw.base}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == login_gw.base
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert set(meta["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert meta["registration_endpoint"] == f"{login_gw.base}/register"
    assert meta["revocation_endpoint"] == f"{login_gw.base}/revoke"
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    challenge = httpx2.post(login_gw.url, json={}).headers["www-authenticate"]
    assert "resource_metadata=" in challenge


# -- the MCP SDK's own client, headless ----------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["none", "client_secret_post"])
def test_sdk_authorization_code_client_registers_logs_in_and_calls(
    login_gw: RunningGateway, auth_method: str
) -> None:
    """OAuthClientProvider, unchanged: 401 -> RFC 9728 -> RFC 8414 -> register -> authorize (a
    headless browser fills the login page) -> token -> the call; alice's role lets her see and call
    the time server only."""
    browser = HeadlessBrowser("alice")

    async def main() -> tuple[list[str], Any, OAuthToken | None]:
        storage = MemoryTokens()
        provider = OAuthClientProvider(
            server_url=login_gw.url,
            client_metadata=OAuthClientMetadata(
                redirect_uris=[REDIRECT],  # type: ignore[list-item]  # pydantic validates the str
                token_endpoint_auth_method=auth_method,  # type: ignore[arg-type]
                client_name="sdk test client",
            ),
            storage=storage,
            redirect_handler=browser.redirect_handler,
            callback_handler=browser.callback_handler,
        )
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as http,
            mcp.Client(streamable_http_client(login_gw.url, http_client=http)) as c,
        ):
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            return names, result, storage.tokens

    names, result, tokens = anyio.run(main)
    assert names and all(n.startswith("time__") for n in names), names
    assert result.is_error is False
    assert browser.seen["iss"] == login_gw.base
    assert tokens is not None and tokens.refresh_token
    assert tokens.scope == "tools:call:time/*"


def test_tokens_name_the_user_and_carry_their_roles_scopes(login_gw: RunningGateway) -> None:
    import jwt

    _, alice = fresh_tokens(login_gw, "alice")
    _, bob = fresh_tokens(login_gw, "bob")
    claims = jwt.decode(alice["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["roles"] == ["reader"]
    assert alice["scope"] == "tools:call:time/*" and bob["scope"] == "tools:call:*"
    assert all(n.startswith("time__") for n in listed(login_gw, alice["access_token"]))
    assert "git__git_status" in listed(login_gw, bob["access_token"])


# -- refresh tokens: rotation, reuse detection, revocation ----------------------------------------


def test_refresh_rotates_and_a_reused_refresh_token_revokes_its_family(login_gw: RunningGateway) -> None:
    client, first = fresh_tokens(login_gw)
    second = tokens_of(refresh(login_gw, client, first["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    still_serving(login_gw, second["access_token"])
    third = tokens_of(refresh(login_gw, client, second["refresh_token"]))
    # The first one again: a stolen copy. It is refused, and the live one dies with it.
    replayed = refresh(login_gw, client, first["refresh_token"])
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant", replayed.text
    dead = refresh(login_gw, client, third["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant", dead.text
    client2, other = fresh_tokens(login_gw)  # another login is untouched
    tokens_of(refresh(login_gw, client2, other["refresh_token"]))


def test_refresh_token_of_another_client_and_revoked_tokens_are_refused(login_gw: RunningGateway) -> None:
    client, tokens = fresh_tokens(login_gw)
    stranger = registered(login_gw)["client_id"]
    r = refresh(login_gw, stranger, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # The SDK's revocation handler wants client_secret present even for a public client (empty).
    form = {"token": tokens["refresh_token"], "client_id": client, "client_secret": ""}
    r = httpx2.post(f"{login_gw.base}/revoke", data=form)
    assert r.status_code == 200, r.text
    r = refresh(login_gw, client, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    r = refresh(login_gw, client, "x" * 5000)
    assert r.status_code == 400, r.text
    fresh_tokens(login_gw)


# -- the code exchange: every way to get it wrong -------------------------------------------------


def test_wrong_verifier_replayed_code_and_another_clients_code_are_refused(login_gw: RunningGateway) -> None:
    client = registered(login_gw)["client_id"]
    pkce = Pkce.new()
    code = log_in(login_gw, client, pkce)["code"]
    r = exchange(login_gw, client, code, Pkce.new().verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    stranger = registered(login_gw)["client_id"]
    r = exchange(login_gw, stranger, code, pkce.verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    r = exchange(login_gw, client, code, pkce.verifier, redirect_uri="http://127.0.0.1:1/other")
    assert r.status_code == 400, r.text
    first = tokens_of(exchange(login_gw, client, code, pkce.verifier))  # the real client, still in time
    r = exchange(login_gw, client, code, pkce.verifier)  # the same code again
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # RFC 6749 4.1.2: what the code issued is revoked once it is replayed.
    r = refresh(login_gw, client, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    fresh_tokens(login_gw)


def test_authorize_refuses_unregistered_redirects_plain_pkce_and_scopes_beyond_the_user(
    login_gw: RunningGateway,
) -> None:
    client = registered(login_gw)["client_id"]
    pkce = Pkce.new()
    # Not a registered redirect URI: an error page here, never a redirect there.
    for uri in ("https://evil.example/cb", "http://127.0.0.1:33418/callback/../evil", REDIRECT + "x"):
        r = authorize(login_gw, client, pkce, redirect_uri=uri)
        assert r.status_code == 400 and "location" not in r.headers, (uri, r.status_code, r.headers)
    r = authorize(login_gw, "no-such-client", pkce)
    assert r.status_code == 400 and "location" not in r.headers
    # PKCE plain, or none: refused (S256 only), back at the registered URI with the error.
    r = authorize(login_gw, client, pkce, code_challenge_method="plain")
    assert r.status_code == 302 and "error=invalid_request" in r.headers["location"], r.headers
    r = httpx2.get(f"{login_gw.base}/authorize?" + urlencode({"response_type": "code", "client_id": client}))
    assert r.status_code in (302, 400) and "code=" not in r.headers.get("location", "")
    r = authorize(login_gw, client, pkce, response_type="token")
    assert "error=unsupported_response_type" in r.headers.get("location", ""), r.headers
    # alice may have time's tools only: asking for every tool gets her nothing.
    query = log_in(login_gw, client, pkce, "alice", scope="tools:call:*")
    assert query.get("error") == "invalid_scope" and "code" not in query, query
    fresh_tokens(login_gw)


# -- the login page ---------------------------------------------------------------------------


def test_login_page_wrong_passwords_deny_foreign_origin_and_expired_requests(
    login_gw: RunningGateway,
) -> None:
    client = registered(login_gw)["client_id"]
    pkce = Pkce.new()
    r = authorize(login_gw, client, pkce, state="keep-me")
    with httpx2.Client() as http:
        action, request_id = login_form(http, r.headers["location"])
        wrong = submit(http, action, request_id, "alice", "not-her-password")
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        unknown = submit(http, action, request_id, "mallory", "whatever")
        assert unknown.status_code == 401
        foreign = submit(http, action, request_id, "alice", PASSWORDS["alice"], origin="https://evil.example")
        assert foreign.status_code == 403
        denied = submit(http, action, request_id, "", "", choice="deny")
        assert denied.status_code == 303
        query = redirect_query(denied)
        assert query["error"] == "access_denied" and query["state"] == "keep-me", query
        again = submit(http, action, request_id, "alice", PASSWORDS["alice"])  # answered already
        assert again.status_code == 400 and "location" not in again.headers
        assert http.get(f"{login_gw.base}/login?request=forged").status_code == 400
        assert (
            http.post(action, content=b"x" * 10_000, headers={"content-type": "text/plain"}).status_code
            == 400
        )
        # Five wrong passwords and the request is gone, even for the right one.
        r = authorize(login_gw, client, pkce)
        action, request_id = login_form(http, r.headers["location"])
        for _ in range(5):
            submit(http, action, request_id, "alice", "guess")
        late = submit(http, action, request_id, "alice", PASSWORDS["alice"])
        assert late.status_code == 400 and "location" not in late.headers
    fresh_tokens(login_gw)


def test_login_page_escapes_what_a_client_registered(login_gw: RunningGateway) -> None:
    client = registered(login_gw, client_name='<script>alert("x")</script>')["client_id"]
    r = authorize(login_gw, client, Pkce.new())
    page = httpx2.get(r.headers["location"])
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


def test_client_credentials_keep_working_beside_the_code_flow(login_gw: RunningGateway) -> None:
    r = httpx2.post(f"{login_gw.base}/token", data={"grant_type": "client_credentials"}, auth=("x", "y"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    r = httpx2.post(f"{login_gw.base}/token", data={"grant_type": "password", "username": "alice"})
    assert r.status_code in (400, 401), r.text
    r = httpx2.post(f"{login_gw.base}/token", content=b"grant_type=" + b"a" * 9000,
                    headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 400, r.text
    _, tokens = fresh_tokens(login_gw)
    r = httpx2.post(login_gw.url, json={}, headers=bearer(tokens["access_token"]))
    assert r.status_code != 401


def test_zz_no_token_secret_or_password_in_any_log(captured_logs: Capture) -> None:
    assert_no_secret_logged(captured_logs, "login: user alice approved client")
