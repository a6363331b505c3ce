"""OAuth 2.1 on the real gateway (gateway/auth/), the issuer's side: the SDK's own client, the
metadata documents, the token endpoint and its refusals, signing-key rotation, over real HTTP in
front of the real cluster. Every bad input is followed by a good call: the gateway keeps serving.
Logs of the whole module are captured and searched for every token and secret it handled."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx2
import jwt
import mcp
import pytest
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from gateway.auth.keys import KeyRing, rotate
from tests.gateway.conftest import (
    LIST,
    SECRETS,
    SEEN,
    Capture,
    MemoryTokens,
    RunningGateway,
    assert_no_secret_logged,
    bearer,
    era,
    listed,
    rpc,
    still_serving,
    token_for,
)

pytestmark = pytest.mark.usefixtures("captured_logs")


# -- the SDK's own client ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_sdk_client_credentials_provider_calls_a_tool(auth_gw: RunningGateway, method: str) -> None:
    """ClientCredentialsOAuthProvider, unchanged: 401 -> RFC 9728 -> RFC 8414 -> token -> call."""

    async def main() -> tuple[list[str], str]:
        storage = MemoryTokens()
        provider = ClientCredentialsOAuthProvider(
            server_url=auth_gw.url,
            storage=storage,
            client_id="reader-bot",
            client_secret=SECRETS["reader-bot"],
            token_endpoint_auth_method=method,  # type: ignore[arg-type]
            issuer=auth_gw.base,
        )
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as http,
            mcp.Client(streamable_http_client(auth_gw.url, http_client=http)) as c,
        ):
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error, result
            assert storage.tokens is not None
            return names, json.loads(result.content[0].text)["timezone"]  # type: ignore[union-attr]

    names, tz = anyio.run(main)
    assert tz == "UTC"
    assert names and all(n.startswith("time__") for n in names), names  # reader sees time only


def test_metadata_documents(auth_gw: RunningGateway) -> None:
    prm = httpx2.get(f"{auth_gw.base}/.well-known/oauth-protected-resource/mcp").json()
    assert prm["resource"] == auth_gw.url and prm["authorization_servers"] == [auth_gw.base]
    meta = httpx2.get(f"{auth_gw.base}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == auth_gw.base
    assert meta["token_endpoint"] == f"{auth_gw.base}/token"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    assert set(meta["scopes_supported"]) == {"tools:call:time/*", "tools:call:*"}
    r = httpx2.get(meta["authorization_endpoint"])
    assert r.status_code == 400 and r.json()["error"] == "unsupported_response_type"
    # A token verifies with the published JWKS alone, as any resource server would check it.
    token = token_for(auth_gw, "ops-bot")
    key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=auth_gw.url, issuer=auth_gw.base)
    assert (
        claims["client_id"] == "ops-bot" and claims["roles"] == ["ops"] and claims["scope"] == "tools:call:*"
    )
    assert jwt.get_unverified_header(token)["kid"] == key.key_id


# -- the token endpoint --------------------------------------------------------------------------


def test_token_endpoint_basic_and_post(auth_gw: RunningGateway) -> None:
    for post in (False, True):
        token = token_for(auth_gw, "reader-bot", post=post)
        assert listed(auth_gw, token) == [n for n in listed(auth_gw, token) if n.startswith("time__")]
    # A narrower scope than the client has, and a partial grant of a wider one.
    r = httpx2.post(
        f"{auth_gw.base}/token",
        data={"grant_type": "client_credentials", "scope": "tools:call:time/* tools:call:*"},
        auth=("reader-bot", SECRETS["reader-bot"]),
    )
    SEEN.add(r.json().get("access_token", ""))
    assert r.status_code == 200 and r.json()["scope"] == "tools:call:time/*", r.text


BAD_TOKEN_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "wrong secret",
        {"data": {"grant_type": "client_credentials"}, "auth": ("reader-bot", "nope")},
        401,
        "invalid_client",
    ),
    (
        "unknown client",
        {"data": {"grant_type": "client_credentials"}, "auth": ("ghost", "x")},
        401,
        "invalid_client",
    ),
    (
        "wrong secret, post",
        {"data": {"grant_type": "client_credentials", "client_id": "ops-bot", "client_secret": "x"}},
        401,
        "invalid_client",
    ),
    ("no client auth", {"data": {"grant_type": "client_credentials"}}, 401, "invalid_client"),
    (
        "password grant",
        {"data": {"grant_type": "password"}, "auth": "reader-bot"},
        400,
        "unsupported_grant_type",
    ),
    (
        "auth code grant",
        {"data": {"grant_type": "authorization_code", "code": "x"}, "auth": "reader-bot"},
        400,
        "unsupported_grant_type",
    ),
    ("no grant type", {"data": {"scope": "tools:call:*"}, "auth": "reader-bot"}, 400, "invalid_request"),
    (
        "JSON body",
        {"json": {"grant_type": "client_credentials"}, "auth": "reader-bot"},
        400,
        "invalid_request",
    ),
    (
        "repeated param",
        {"content": b"grant_type=client_credentials&grant_type=client_credentials", "auth": "reader-bot"},
        400,
        "invalid_request",
    ),
    (
        "broken basic",
        {"data": {"grant_type": "client_credentials"}, "headers": {"authorization": "Basic %%%"}},
        400,
        "invalid_request",
    ),
    (
        "two auth methods",
        {"data": {"grant_type": "client_credentials", "client_secret": "x"}, "auth": "reader-bot"},
        400,
        "invalid_request",
    ),
    (
        "not a scope",
        {"data": {"grant_type": "client_credentials", "scope": "admin"}, "auth": "reader-bot"},
        400,
        "invalid_scope",
    ),
    (
        "scope not granted",
        {"data": {"grant_type": "client_credentials", "scope": "tools:call:git/*"}, "auth": "reader-bot"},
        400,
        "invalid_scope",
    ),
    (
        "other resource",
        {
            "data": {"grant_type": "client_credentials", "resource": "http://elsewhere/mcp"},
            "auth": "reader-bot",
        },
        400,
        "invalid_target",
    ),
    (
        "huge body",
        {"content": b"grant_type=client_credentials&x=" + b"a" * 20_000, "auth": "reader-bot"},
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("why", "kwargs", "status", "error"), BAD_TOKEN_REQUESTS, ids=[b[0] for b in BAD_TOKEN_REQUESTS]
)
def test_bad_token_requests(
    auth_gw: RunningGateway, why: str, kwargs: dict[str, Any], status: int, error: str
) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("auth") in SECRETS:
        kwargs["auth"] = (kwargs["auth"], SECRETS[kwargs["auth"]])
    if "content" in kwargs:
        kwargs["headers"] = {"content-type": "application/x-www-form-urlencoded"}
    r = httpx2.post(f"{auth_gw.base}/token", **kwargs)
    assert r.status_code == status, (why, r.text)
    assert r.json()["error"] == error, (why, r.text)
    assert "access_token" not in r.json()
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic"), r.headers
    assert httpx2.get(f"{auth_gw.base}/token").status_code == 405
    still_serving(auth_gw, token_for(auth_gw, "ops-bot"))


# -- keys ----------------------------------------------------------------------------------------


def test_rotation_old_key_verifies_until_its_tokens_expire_removed_key_does_not(
    auth_gw: RunningGateway, ring: KeyRing
) -> None:
    auth = auth_gw.config.gateway.auth
    old_token = token_for(auth_gw, "ops-bot")
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    _, new = rotate(ring.store, auth, time.time(), force=True)  # `agentful keys rotate`
    assert new is not None
    deadline = time.monotonic() + 30  # replicas pick the new key up within keys.RELOAD_S
    while jwt.get_unverified_header(new_token := token_for(auth_gw, "ops-bot"))["kid"] != new.kid:
        assert time.monotonic() < deadline, "the gateway kept signing with the old key"
        time.sleep(0.5)
    still_serving(auth_gw, new_token)
    still_serving(auth_gw, old_token)  # retired, but its tokens are still alive
    assert {k["kid"] for k in httpx2.get(f"{auth_gw.base}/.well-known/jwks.json").json()["keys"]} >= {
        old_kid,
        new.kid,
    }
    # A rotation done as if a whole token lifetime ago: the key it retired verifies no more.
    _, newer = rotate(ring.store, auth, time.time() - auth.token_ttl - auth.leeway_s - 1, force=True)
    assert newer is not None
    while rpc(auth_gw.url, LIST, headers=bearer(new_token) | era(LIST)).status_code != 401:
        assert time.monotonic() < deadline, "a key retired a token lifetime ago still verifies"
        time.sleep(0.5)
    # And `agentful keys remove`: a key removed from the store verifies no more.
    ring.store.remove(old_kid)
    while rpc(auth_gw.url, LIST, headers=bearer(old_token) | era(LIST)).status_code != 401:
        assert time.monotonic() < deadline, "a removed key still verifies"
        time.sleep(0.5)
    still_serving(auth_gw, token_for(auth_gw, "ops-bot"))


# -- logs ----------------------------------------------------------------------------------------


def test_zz_no_token_or_secret_in_any_log(captured_logs: Capture) -> None:
    """Runs last in this module: every line logged by anyone while the tests above ran."""
    assert_no_secret_logged(captured_logs, proof="token request refused")
