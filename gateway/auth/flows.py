"""The routes of the authorization code flow (gateway/auth/interactive.py), wired from the MCP
SDK's own handlers (`mcp.server.auth.routes.create_auth_routes`): its /authorize, /register,
/revoke and the authorization code and refresh halves of /token, moved under the issuer's path,
plus the login page. Two things the SDK leaves to its host are here, in front of its handlers:

- `/token` is shared: a request's `grant_type` sends it to the SDK's handler or, for
  `client_credentials`, to ours (gateway/auth/routes.py), read once and replayed;
- `/register` is capped per source address and per hour, and in size, before the SDK reads the
  body (its own limit is a megabyte).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from mcp.server.auth.routes import create_auth_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from pydantic import AnyHttpUrl
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.grants import GrantStore
from gateway.auth.guard import replay
from gateway.auth.interactive import InteractiveProvider
from gateway.auth.keys import KeyRing
from gateway.auth.login import LoginPage
from gateway.auth.verifier import issuer_of
from tasks.config_file import ConfigFile
from tasks.errors import ConfigError

log = logging.getLogger(__name__)
MAX_TOKEN_BODY = 8192
SDK_GRANTS = frozenset({"authorization_code", "refresh_token"})


async def _json(send: Send, status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _read(receive: Receive, limit: int) -> tuple[bytes | None, Message | None]:
    """The whole body (None if over `limit`), or the message that ended it early (a disconnect)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks), None


class TokenRouter:
    """One /token: authorization codes and refresh tokens to the SDK, the rest to ours."""

    def __init__(self, sdk: ASGIApp, ours: ASGIApp) -> None:
        self.sdk, self.ours = sdk, ours

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":  # a CORS preflight: the SDK's CORS layer answers it
            await self.sdk(scope, receive, send)
            return
        body, ended = await _read(receive, MAX_TOKEN_BODY)
        if body is None:
            await _json(
                send,
                400,
                {"error": "invalid_request", "error_description": f"body over {MAX_TOKEN_BODY} bytes"},
            )
            return
        if ended is not None:
            await self.ours(scope, replay([], ended, receive), send)
            return
        try:
            grant_type = parse_qs(body.decode("utf-8")).get("grant_type", [""])
        except UnicodeDecodeError:
            grant_type = [""]
        target = self.sdk if len(grant_type) == 1 and grant_type[0] in SDK_GRANTS else self.ours
        await target(scope, replay([body], None, receive), send)


class RegistrationLimit:
    """At most `per_hour` registrations per source address, each at most `max_bytes`."""

    def __init__(
        self, app: ASGIApp, store: GrantStore, issuer: str, *, per_hour: int, max_bytes: int
    ) -> None:
        self.app, self.store, self.issuer = app, store, issuer
        self.per_hour, self.max_bytes = per_hour, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body, ended = await _read(receive, self.max_bytes)
        if body is None:
            log.info("client registration refused: over %d bytes", self.max_bytes)
            too_big = f"a registration is at most {self.max_bytes} bytes"
            await _json(send, 413, {"error": "invalid_client_metadata", "error_description": too_big})
            return
        if ended is not None:
            return  # the client went away: nothing to answer
        peer = scope.get("client")
        source = str(peer[0]) if peer else "unknown"
        count = await self.store.count_registration(self.issuer, source)
        if count > self.per_hour:
            log.warning(
                "client registration refused: %s made %d this hour (limit %d)", source, count, self.per_hour
            )
            retry = str(3600 - int(time.time()) % 3600)
            capped = f"at most {self.per_hour} registrations an hour from one address"
            body_429 = {"error": "invalid_client_metadata", "error_description": capped}
            await _json(send, 429, body_429, {"retry-after": retry})
            return
        await self.app(scope, replay([body], None, receive), send)


def grant_store() -> GrantStore:
    from tasks.store import catalog_store

    store = catalog_store()
    if store is None:
        raise ConfigError(
            "gateway.auth.users needs Redis for its logins and refresh tokens: the broker or the "
            "result backend must be Redis (or Valkey)"
        )
    return GrantStore.from_url(store.url)


def interactive_routes(
    config: ConfigFile, ring: KeyRing, base: str, ours: ASGIApp, *, clock: Callable[[], float] = time.time
) -> list[BaseRoute]:
    auth = config.gateway.auth
    issuer = issuer_of(config)
    store = grant_store()
    provider = InteractiveProvider(config, ring, store, login_url=f"{issuer}/login", clock=clock)
    try:
        sdk = create_auth_routes(
            provider,
            AnyHttpUrl(issuer),
            client_registration_options=ClientRegistrationOptions(
                enabled=auth.registration.enabled,
                valid_scopes=provider.scopes,
                default_scopes=provider.scopes,
            ),
            revocation_options=RevocationOptions(enabled=True),
        )
    except ValueError as exc:  # the SDK's issuer check: RFC 8414 asks for https
        raise ConfigError(
            f"gateway.auth.users: the issuer {issuer} must be https (gateway.tls), "
            f"or http on a loopback address ({exc})"
        ) from None
    by_path = {r.path: r.endpoint for r in sdk if isinstance(r, Route)}
    routes: list[BaseRoute] = [
        Route(f"{base}/authorize", by_path["/authorize"], methods=["GET", "POST"]),
        Route(f"{base}/token", TokenRouter(by_path["/token"], ours), methods=["POST", "OPTIONS"]),
        Route(f"{base}/revoke", by_path["/revoke"], methods=["POST", "OPTIONS"]),
        Route(f"{base}/login", LoginPage(provider, action=f"{base}/login").handle, methods=["GET", "POST"]),
    ]
    if auth.registration.enabled:
        limited = RegistrationLimit(
            by_path["/register"], store, issuer,
            per_hour=auth.registration.per_source_per_hour, max_bytes=auth.registration.max_bytes,
        )  # fmt: skip
        routes.append(Route(f"{base}/register", limited, methods=["POST", "OPTIONS"]))
    return routes
