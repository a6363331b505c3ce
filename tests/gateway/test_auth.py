"""OAuth 2.1 on the real gateway (gateway/auth/): tokens, bad tokens, scopes, keys, over real HTTP
in front of the real cluster. Every bad input is followed by a good call: the gateway keeps serving.
Logs of the whole module are captured and searched for every token and secret it handled."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import jwt
import mcp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from gateway.auth.keys import KeyRing, rotate
from gateway.auth.passwords import hash_secret
from gateway.auth.verifier import build_key_ring
from tests.gateway.conftest import RunningGateway, rpc

SECRETS = {"reader-bot": "reader-" + uuid.uuid4().hex, "ops-bot": "ops/+:" + uuid.uuid4().hex}
ROLES = {"reader": ["tools:call:time/*"], "ops": ["tools:call:*"]}
SEEN: set[str] = set(SECRETS.values())  # every secret and token this module handles


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module", autouse=True)
def captured_logs() -> Iterator[_Capture]:
    """Every log line of every logger (ours, the SDK's, uvicorn's, httpx2's) at DEBUG."""
    handler = _Capture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(before)


@pytest.fixture(scope="module")
def auth_gw(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    clients = {
        "reader-bot": {"secretHash": hash_secret(SECRETS["reader-bot"], log2_n=12), "roles": ["reader"]},
        "ops-bot": {"secretHash": hash_secret(SECRETS["ops-bot"], log2_n=12), "roles": ["ops"]},
    }
    gw = gateway_factory({"auth": {"enabled": True, "tokenTtl": 600, "clients": clients, "roles": ROLES}})
    gw.wait_for_tools("time__get_current_time", "git__git_status")
    return gw


@pytest.fixture(scope="module")
def ring(auth_gw: RunningGateway) -> KeyRing:
    """The gateway's key store, opened as another replica would."""
    return build_key_ring(auth_gw.config)


def token_for(gw: RunningGateway, client: str, scope: str | None = None, *, post: bool = False) -> str:
    data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    if post:
        r = httpx2.post(
            f"{gw.base}/token", data=data | {"client_id": client, "client_secret": SECRETS[client]}
        )
    else:
        r = httpx2.post(f"{gw.base}/token", data=data, auth=(client, SECRETS[client]))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = str(r.json()["access_token"])
    SEEN.add(token)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ERA = "2026-07-28"  # stateless: every request carries its own envelope, no session to set up
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": ERA, "io.modelcontextprotocol/clientCapabilities": {}}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": ENVELOPE}}


def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    params = {"name": name, "arguments": args, "_meta": ENVELOPE}
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}


def era(body: dict[str, Any]) -> dict[str, str]:
    headers = {"mcp-protocol-version": ERA, "mcp-method": body["method"]}
    if "name" in body["params"]:
        headers["mcp-name"] = body["params"]["name"]
    return headers


def listed(gw: RunningGateway, token: str) -> list[str]:
    r = rpc(gw.url, LIST, headers=bearer(token) | era(LIST))
    assert r.status_code == 200, r.text
    return [t["name"] for t in r.json()["result"]["tools"]]


def still_serving(gw: RunningGateway, token: str) -> None:
    body = call("time__get_current_time", {"timezone": "UTC"})
    r = rpc(gw.url, body, headers=bearer(token) | era(body))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["isError"] is False


# -- the SDK's own client ----------------------------------------------------------------------


class _Memory:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        SEEN.add(tokens.access_token)
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.info = client_info


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_sdk_client_credentials_provider_calls_a_tool(auth_gw: RunningGateway, method: str) -> None:
    """ClientCredentialsOAuthProvider, unchanged: 401 -> RFC 9728 -> RFC 8414 -> token -> call."""

    async def main() -> tuple[list[str], str]:
        storage = _Memory()
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


# -- bad bearer tokens ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(gw: RunningGateway, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": gw.base,
        "aud": gw.url,
        "sub": "ops-bot",
        "client_id": "ops-bot",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "tools:call:*",
        "roles": ["ops"],
    }
    return {k: v for k, v in (claims | over).items() if v is not None}


def _forge(gw: RunningGateway, ring: KeyRing, why: str) -> str:
    key, private = ring.signer()

    def sign(c: dict[str, Any]) -> str:
        return jwt.encode(c, private, "ES256", headers={"kid": key.kid})

    now = int(time.time())
    if why == "expired":
        return sign(_claims(gw, iat=now - 4000, exp=now - 3600))
    if why == "not yet valid":
        return sign(_claims(gw, nbf=now + 3600, exp=now + 7200))
    if why == "wrong audience":
        return sign(_claims(gw, aud="http://127.0.0.1:1/mcp"))
    if why == "wrong issuer":
        return sign(_claims(gw, iss="http://evil.example"))
    if why == "no jti":
        return sign(_claims(gw, jti=None))
    if why == "unknown kid":
        other = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(_claims(gw), other, "ES256", headers={"kid": "not-a-key-of-ours"})
    if why == "alg none":
        return jwt.encode(_claims(gw), None, algorithm="none", headers={"kid": key.kid})  # type: ignore[arg-type]
    if why == "HS256 with the public key":
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
        signing_input = f"{header}.{_b64(json.dumps(_claims(gw)).encode())}"
        return f"{signing_input}.{_b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    if why == "tampered payload":
        head, _, sig = sign(_claims(gw, scope="tools:call:time/*")).split(".")
        return f"{head}.{_b64(json.dumps(_claims(gw)).encode())}.{sig}"
    if why == "signed by another key, our kid":
        return jwt.encode(
            _claims(gw), ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": key.kid}
        )
    if why == "oversized":
        return sign(_claims(gw, pad="x" * 12_000))
    if why == "garbage":
        return "not.a.jwt"
    raise AssertionError(why)


BAD_TOKENS = [
    "expired",
    "not yet valid",
    "wrong audience",
    "wrong issuer",
    "no jti",
    "unknown kid",
    "alg none",
    "HS256 with the public key",
    "tampered payload",
    "signed by another key, our kid",
    "oversized",
    "garbage",
]


def test_a_good_forged_token_is_accepted(auth_gw: RunningGateway, ring: KeyRing) -> None:
    """The control: the same forging code with nothing wrong passes, so each refusal below is real."""
    key, private = ring.signer()
    token = jwt.encode(_claims(auth_gw), private, "ES256", headers={"kid": key.kid})
    SEEN.add(token)
    still_serving(auth_gw, token)


@pytest.mark.parametrize("why", BAD_TOKENS)
def test_bad_bearer_tokens_get_401(auth_gw: RunningGateway, ring: KeyRing, why: str) -> None:
    token = _forge(auth_gw, ring, why)
    SEEN.add(token)
    r = rpc(auth_gw.url, LIST, headers=bearer(token) | era(LIST))
    assert r.status_code == 401, (why, r.status_code, r.text)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
    assert f'resource_metadata="{auth_gw.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    still_serving(auth_gw, token_for(auth_gw, "ops-bot"))


@pytest.mark.parametrize("header", [None, "Bearer", "Basic b3BzOng=", "bearer  x y", "Bearer a.b"])
def test_missing_or_malformed_authorization_gets_401(auth_gw: RunningGateway, header: str | None) -> None:
    r = rpc(auth_gw.url, LIST, headers=era(LIST) | ({"authorization": header} if header is not None else {}))
    assert r.status_code == 401, r.text
    assert "resource_metadata=" in r.headers["www-authenticate"]


# -- scopes --------------------------------------------------------------------------------------


def test_tools_list_shows_only_what_the_caller_may_call(auth_gw: RunningGateway) -> None:
    reader = listed(auth_gw, token_for(auth_gw, "reader-bot"))
    ops = listed(auth_gw, token_for(auth_gw, "ops-bot"))
    assert reader and all(n.startswith("time__") for n in reader), reader
    assert set(reader) < set(ops) and "git__git_status" in ops


def test_a_forbidden_call_gets_403_insufficient_scope(auth_gw: RunningGateway) -> None:
    token = token_for(auth_gw, "reader-bot")
    body = call("git__git_status", {"repo_path": "."})
    r = rpc(auth_gw.url, body, headers=bearer(token) | era(body))
    assert r.status_code == 403, r.text
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="tools:call:git/git_status"' in challenge
    assert r.json()["error"] == "insufficient_scope"
    still_serving(auth_gw, token)  # the same token, on a tool it may call
    narrow = token_for(auth_gw, "ops-bot", scope="tools:call:time/get_current_time")
    still_serving(auth_gw, narrow)
    body = call("time__convert_time", {})
    r = rpc(auth_gw.url, body, headers=bearer(narrow) | era(body))
    assert r.status_code == 403 and 'scope="tools:call:time/convert_time"' in r.headers["www-authenticate"]


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


def test_403_in_the_session_era_too(auth_gw: RunningGateway) -> None:
    """2025-11-25: initialize, then a forbidden call in the session: 403; an allowed one: 200."""
    auth = bearer(token_for(auth_gw, "reader-bot"))
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    r = rpc(auth_gw.url, init, headers=auth)
    assert r.status_code == 200, r.text
    session = auth | {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    assert (
        rpc(
            auth_gw.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
        ).status_code
        == 202
    )
    forbidden = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "git__git_log", "arguments": {}},
    }
    r = rpc(auth_gw.url, forbidden, headers=session)
    assert r.status_code == 403 and 'scope="tools:call:git/git_log"' in r.headers["www-authenticate"], r.text
    allowed = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}},
    }
    r = rpc(auth_gw.url, allowed, headers=session)
    assert r.status_code == 200 and r.json()["result"]["isError"] is False, r.text
    # Another client's token cannot use this session (the SDK binds a session to its principal).
    other = session | bearer(token_for(auth_gw, "ops-bot"))
    assert rpc(auth_gw.url, allowed, headers=other).status_code in (403, 404), "session hijacked"


# -- logs ----------------------------------------------------------------------------------------


def test_zz_no_token_or_secret_in_any_log(captured_logs: _Capture) -> None:
    """Runs last in this module: every line logged by anyone while the tests above ran."""
    if len(SEEN) <= len(SECRETS):
        pytest.skip("no token was handled: run the whole module")
    assert len(captured_logs.lines) > 20, "the capture saw nothing: the check would prove nothing"
    assert any("bearer token refused" in line for line in captured_logs.lines)
    leaks = [s[:12] for s in SEEN if s and any(s in line for line in captured_logs.lines)]
    # Pieces too: a token's signature alone is as good as a leak of the token.
    sigs = [s.rsplit(".", 1)[-1] for s in SEEN if s.count(".") == 2 and len(s.rsplit(".", 1)[-1]) > 20]
    leaks += [s[:12] for s in sigs if any(s in line for line in captured_logs.lines)]
    assert not leaks, f"secrets or tokens in the logs: {leaks}"
