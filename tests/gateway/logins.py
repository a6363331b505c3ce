"""Driving the authorization code flow as a browser and an MCP client would: register, authorize,
fill the login page, exchange and refresh (tests/gateway/test_auth_interactive.py and
test_auth_registration.py). The gateway under test has two users: alice (role reader: the time
server's tools) and bob (ops: every tool)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import anyio
import httpx2
from mcp.shared.auth import AuthorizationCodeResult

from tests.gateway.conftest import ROLES, SEEN, RunningGateway

PASSWORDS = {"alice": "alice-" + secrets.token_hex(8), "bob": "b0b/+:" + secrets.token_hex(8)}
SEEN.update(PASSWORDS.values())
REDIRECT = "http://127.0.0.1:33418/callback"  # never listened on: the tests read the Location
PER_HOUR = 80


def start_login_gateway(
    gateway_factory: Callable[..., RunningGateway], **registration: Any
) -> RunningGateway:
    from gateway.auth.passwords import hash_secret

    users = {
        "alice": {"passwordHash": hash_secret(PASSWORDS["alice"], log2_n=12), "roles": ["reader"]},
        "bob": {"passwordHash": hash_secret(PASSWORDS["bob"], log2_n=12), "roles": ["ops"]},
    }
    gw = gateway_factory(
        {
            "auth": {
                "enabled": True,
                "tokenTtl": 600,
                "roles": ROLES,
                "users": users,
                "registration": {"perSourcePerHour": PER_HOUR, "maxBytes": 4096, **registration},
            }
        }
    )
    gw.wait_for_tools("time__get_current_time", "git__git_status")
    return gw


@dataclass
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).decode().rstrip("="))


def register(gw: RunningGateway, **meta: Any) -> httpx2.Response:
    body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "client_name": "test app"}
    body |= meta
    return httpx2.post(f"{gw.base}/register", json=body)


def registered(gw: RunningGateway, **meta: Any) -> dict[str, Any]:
    r = register(gw, **meta)
    assert r.status_code == 201, r.text
    info: dict[str, Any] = r.json()
    return info


def authorize(gw: RunningGateway, client_id: str, pkce: Pkce, **extra: str) -> httpx2.Response:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": "st-" + secrets.token_hex(4),
    } | extra
    return httpx2.get(f"{gw.base}/authorize?{urlencode(params)}")


def login_form(http: httpx2.Client, url: str) -> tuple[str, str]:
    """(the form's action URL, its request id) from the login page at `url`."""
    page = http.get(url, follow_redirects=True)  # as a browser does: /authorize -> /login
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    action = unescape(re.search(r'<form method="post" action="([^"]+)"', page.text)[1])  # type: ignore[index]
    request_id = unescape(re.search(r'name="request" value="([^"]+)"', page.text)[1])  # type: ignore[index]
    return str(page.url.join(action)), request_id


def submit(
    http: httpx2.Client,
    action: str,
    request_id: str,
    user: str,
    password: str,
    choice: str = "allow",
    **h: str,
) -> httpx2.Response:
    form = {"request": request_id, "username": user, "password": password, "action": choice}
    return http.post(action, data=form, headers=h)


def log_in(
    gw: RunningGateway, client_id: str, pkce: Pkce, user: str = "alice", **extra: str
) -> dict[str, str]:
    """The whole browser half: /authorize, the login page, allow; the redirect's query."""
    r = authorize(gw, client_id, pkce, **extra)
    assert r.status_code == 302, r.text
    with httpx2.Client() as http:
        action, request_id = login_form(http, r.headers["location"])
        answer = submit(http, action, request_id, user, PASSWORDS[user])
    assert answer.status_code == 303, answer.text
    return redirect_query(answer)


def redirect_query(r: httpx2.Response) -> dict[str, str]:
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def exchange(gw: RunningGateway, client_id: str, code: str, verifier: str, **extra: str) -> httpx2.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    } | extra
    return httpx2.post(f"{gw.base}/token", data=form)


def refresh(gw: RunningGateway, client_id: str, token: str) -> httpx2.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    return httpx2.post(f"{gw.base}/token", data=form)


def tokens_of(r: httpx2.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    SEEN.update(str(body[k]) for k in ("access_token", "refresh_token") if body.get(k))
    return body


def fresh_tokens(gw: RunningGateway, user: str = "alice") -> tuple[str, dict[str, Any]]:
    client = registered(gw)["client_id"]
    pkce = Pkce.new()
    query = log_in(gw, client, pkce, user)
    return client, tokens_of(exchange(gw, client, query["code"], pkce.verifier))


class HeadlessBrowser:
    """The MCP SDK client's redirect and callback handlers, with a browser of our own: it
    follows the authorization URL to the login page, signs `user` in and allows."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.seen: dict[str, str] = {}

    async def redirect_handler(self, url: str) -> None:
        def browse() -> None:
            with httpx2.Client() as http:
                action, request_id = login_form(http, url)
                answer = submit(http, action, request_id, self.user, PASSWORDS[self.user])
                assert answer.status_code == 303, answer.text
                self.seen.update(redirect_query(answer))

        await anyio.to_thread.run_sync(browse)

    async def callback_handler(self) -> AuthorizationCodeResult:
        seen = self.seen
        return AuthorizationCodeResult(code=seen["code"], state=seen.get("state"), iss=seen.get("iss"))
