"""Client credentials for the workers' own HTTP MCP clients: an httpx2.Auth that gets a token
from a fixed token URL, caches it, renews it before it expires and once more after a 401.

Hand-written rather than the SDK's ClientCredentialsOAuthProvider because that one discovers the
token endpoint through RFC 9728 + RFC 8414 metadata, which many servers behind a corporate IdP do
not publish; a configured `tokenUrl` works with any OAuth 2 server (and with this gateway's).
Light on purpose (httpx2 and anyio only). The gateway's own token endpoint (gateway/auth/routes.py)
is one server it works with; it imports nothing of the gateway.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import anyio
import httpx2

from tasks.config_file import ServerOAuthSpec


class OAuthTokenError(Exception):
    """The token endpoint refused or did not answer; the message carries no secret."""


class ClientCredentialsAuth(httpx2.Auth):
    requires_response_body = True

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        resource: str | None = None,
        method: str = "client_secret_basic",
        renew_before_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_url, self.client_id, self._secret = token_url, client_id, client_secret
        self.scope, self.resource, self.method = scope, resource, method
        self.renew_before_s, self.clock = renew_before_s, clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: anyio.Lock | None = None
        self.fetches = 0  # token requests made, for tests and logs

    def __repr__(self) -> str:  # never the secret or the token
        return f"ClientCredentialsAuth({self.token_url!r}, client_id={self.client_id!r})"

    def _valid(self) -> bool:
        return self._token is not None and self.clock() < self._expires_at - self.renew_before_s

    def _token_request(self) -> httpx2.Request:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        if self.resource:
            data["resource"] = self.resource
        if self.method == "client_secret_post":
            data |= {"client_id": self.client_id, "client_secret": self._secret}
            return httpx2.Request("POST", self.token_url, data=data)
        basic = httpx2.BasicAuth(_form_quote(self.client_id), _form_quote(self._secret))
        request = httpx2.Request("POST", self.token_url, data=data)
        return next(basic.sync_auth_flow(request))

    def _accept(self, response: httpx2.Response) -> None:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            what = (
                f"{body.get('error')}: {body.get('error_description', '')}"
                if isinstance(body, dict) and "error" in body
                else f"HTTP {response.status_code}"
            )
            raise OAuthTokenError(
                f"token request to {self.token_url} for client {self.client_id!r} failed: {what}"
            )
        if str(body.get("token_type", "")).lower() != "bearer":
            raise OAuthTokenError(
                f"token endpoint {self.token_url} gave a {body.get('token_type')!r} token, not Bearer"
            )
        self._token = str(body["access_token"])
        expires_in = body.get("expires_in")
        self._expires_at = self.clock() + (
            float(expires_in) if isinstance(expires_in, int | float) else 300.0
        )
        self.fetches += 1

    def invalidate(self) -> None:
        self._token = None

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self._lock is None:
            self._lock = anyio.Lock()
        for attempt in (1, 2):
            async with self._lock:
                if not self._valid():
                    token_response = yield self._token_request()
                    await token_response.aread()
                    self._accept(token_response)
                token = self._token
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401 or attempt == 2:
                return
            # Refused: the key that signed it may be gone. One fresh token, one retry.
            async with self._lock:
                if self._token == token:
                    self.invalidate()

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise RuntimeError("ClientCredentialsAuth is for async clients")


def _form_quote(value: str) -> str:
    # RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
    from urllib.parse import quote_plus

    return quote_plus(value)


def auth_for(spec: ServerOAuthSpec) -> ClientCredentialsAuth:
    """The auth of one configured server; the secret from its environment variable."""
    secret = os.environ.get(spec.client_secret_env)
    if not secret:
        raise OAuthTokenError(
            f"oauth.clientSecretEnv: environment variable {spec.client_secret_env} is not set"
        )
    return ClientCredentialsAuth(
        spec.token_url,
        spec.client_id,
        secret,
        scope=spec.scope,
        resource=spec.resource,
        method=spec.auth_method,
    )
