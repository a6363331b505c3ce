"""OAuth 2.1 on the real gateway (gateway/auth/), the resource server's side: bearer tokens on
MCP requests (forged, bad, missing: 401) and scopes (what tools/list shows, 403
insufficient_scope in both eras), over real HTTP in front of the real cluster. Every bad input is
followed by a good call: the gateway keeps serving.
Logs of the whole module are captured and searched for every token and secret it handled."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.keys import KeyRing
from tests.gateway.conftest import (
    LIST,
    SEEN,
    Capture,
    RunningGateway,
    assert_no_secret_logged,
    bearer,
    call,
    era,
    listed,
    rpc,
    still_serving,
    token_for,
)
from tests.gateway.test_gateway import legacy_session

pytestmark = pytest.mark.usefixtures("captured_logs")


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


def test_403_in_the_session_era_too(auth_gw: RunningGateway) -> None:
    """2025-11-25: initialize, then a forbidden call in the session: 403; an allowed one: 200."""
    session = legacy_session(auth_gw.url, bearer(token_for(auth_gw, "reader-bot")))
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


def test_zz_no_token_or_secret_in_any_log(captured_logs: Capture) -> None:
    """Runs last in this module: every line logged by anyone while the tests above ran."""
    assert_no_secret_logged(captured_logs, proof="bearer token refused")
