"""An external issuer (any OIDC provider) instead of the built-in one: its JWKS served by a second
real HTTP server, its RS256 tokens checked by the real gateway; roles from a nested claim."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import free_port
from tests.gateway.conftest import LIST, RunningGateway, bearer, call, era, rpc

ISSUER = "https://idp.example.test/realms/agents"
AUDIENCE = "agentful-gateway"
KEY = rsa.generate_private_key(65537, 2048)
KID = "idp-key-1"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True) | {"kid": KID, "use": "sig", "alg": "RS256"}

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [jwk]})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/certs", jwks)]), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/certs"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def ext_gw(gateway_factory: Callable[..., RunningGateway], jwks_url: str) -> RunningGateway:
    auth = {
        "enabled": True,
        "roles": {"time-user": ["tools:call:time/*"]},
        "external": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwksUrl": jwks_url,
            "algorithms": ["RS256"],
            "rolesClaim": "realm_access.roles",
        },
    }
    gw = gateway_factory({"auth": auth})
    gw.wait_for_tools("time__get_current_time", "git__git_status")
    return gw


def idp_token(key: Any = KEY, kid: str = KID, **over: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "azp": "agent-7",
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "openid profile",
        "realm_access": {"roles": ["time-user", "offline_access"]},
    } | over
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, "RS256", headers={"kid": kid})


def tools(gw: RunningGateway, token: str) -> list[str]:
    r = rpc(gw.url, LIST, headers=bearer(token) | era(LIST))
    assert r.status_code == 200, r.text
    return [t["name"] for t in r.json()["result"]["tools"]]


def test_roles_claim_maps_to_scopes(ext_gw: RunningGateway) -> None:
    names = tools(ext_gw, idp_token())
    assert names and all(n.startswith("time__") for n in names), names
    body = call("time__get_current_time", {"timezone": "UTC"})
    r = rpc(ext_gw.url, body, headers=bearer(idp_token()) | era(body))
    assert r.status_code == 200 and r.json()["result"]["isError"] is False, r.text
    body = call("git__git_status", {"repo_path": "."})
    r = rpc(ext_gw.url, body, headers=bearer(idp_token()) | era(body))
    assert r.status_code == 403 and 'scope="tools:call:git/git_status"' in r.headers["www-authenticate"]


def test_scopes_in_the_token_count_too(ext_gw: RunningGateway) -> None:
    names = tools(ext_gw, idp_token(scope="openid tools:call:git/*", realm_access=None))
    assert names and all(n.startswith("git__") for n in names), names


def test_metadata_points_at_the_external_issuer(ext_gw: RunningGateway) -> None:
    prm = httpx2.get(f"{ext_gw.base}/.well-known/oauth-protected-resource/mcp").json()
    assert prm["authorization_servers"] == [ISSUER]
    assert httpx2.post(f"{ext_gw.base}/token", data={"grant_type": "client_credentials"}).status_code == 404


BAD = {
    "wrong issuer": lambda: idp_token(iss="https://other.example.test"),
    "wrong audience": lambda: idp_token(aud="someone-else"),
    "expired": lambda: idp_token(iat=int(time.time()) - 4000, exp=int(time.time()) - 3600),
    "not yet valid": lambda: idp_token(nbf=int(time.time()) + 3600),
    "unknown kid": lambda: idp_token(kid="rotated-away"),
    "another key, known kid": lambda: idp_token(key=rsa.generate_private_key(65537, 2048)),
    "no jti": lambda: idp_token(jti=None),
    "HS256": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE}, "k" * 32, "HS256", headers={"kid": KID}),
}


@pytest.mark.parametrize("why", list(BAD))
def test_bad_external_tokens_get_401(ext_gw: RunningGateway, why: str) -> None:
    r = rpc(ext_gw.url, LIST, headers=bearer(BAD[why]()) | era(LIST))
    assert r.status_code == 401, (why, r.text)
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert tools(ext_gw, idp_token())  # still serving
