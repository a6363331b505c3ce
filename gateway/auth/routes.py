"""The built-in authorization server's HTTP endpoints:

- `POST /token`: client credentials here (RFC 6749 4.4; client_secret_basic or
  client_secret_post); with `gateway.auth.users`, authorization codes and refresh tokens go to
  the MCP SDK's token handler (gateway/auth/interactive.py),
- `GET /.well-known/jwks.json` (the keys that verify, for any resource server),
- `GET /.well-known/oauth-authorization-server` (RFC 8414; with the issuer's path appended),
- `GET /authorize`: with users, the SDK's authorization endpoint (PKCE S256), which sends the
  browser to `/login` (gateway/auth/login.py); without, it only says that there is no
  authorization code flow (the MCP SDK's metadata model requires the field),
- with users: `POST /register` (RFC 7591, capped per source address and in size) and
  `POST /revoke` (RFC 7009).

Paths are under the issuer's own path, if it has one. With an external issuer there are none.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlparse

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, request_response

from gateway.auth.keys import KeyRing
from gateway.auth.passwords import dummy_hash, verify_secret
from gateway.auth.scopes import grant, parse_scope, scopes_for_roles
from gateway.auth.tokens import issue_token
from gateway.auth.verifier import audience_of, build_key_ring, issuer_of
from tasks.config_file import ConfigFile
from tasks.config_gateway import AuthClientSpec

log = logging.getLogger(__name__)

MAX_TOKEN_REQUEST_BYTES = 8192
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status, headers={**NO_STORE, **(headers or {})}
    )


class TokenRequestError(Exception):
    def __init__(self, status: int, error: str, description: str, *, basic: bool = False) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        # RFC 6749 5.2: a 401 for a client that tried Basic carries a Basic challenge.
        self.headers = {"WWW-Authenticate": 'Basic realm="agentful"'} if status == 401 else {}
        self.basic = basic


def _basic_credentials(header: str) -> list[tuple[str, str]]:
    """(client id, secret) as RFC 6749 2.3.1 says (form-urlencoded, then Basic), and as sent raw
    if that differs: many HTTP clients skip the urlencoding step."""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TokenRequestError(400, "invalid_request", "malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise TokenRequestError(400, "invalid_request", "malformed Basic credentials")
    pair = (unquote_plus(client_id), unquote_plus(secret))
    return [pair] if pair == (client_id, secret) else [pair, (client_id, secret)]


async def _form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise TokenRequestError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_TOKEN_REQUEST_BYTES):
        raise TokenRequestError(400, "invalid_request", f"body over {MAX_TOKEN_REQUEST_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_TOKEN_REQUEST_BYTES:
            raise TokenRequestError(400, "invalid_request", f"body over {MAX_TOKEN_REQUEST_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise TokenRequestError(400, "invalid_request", "malformed form body") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 3.2: parameters must not repeat
            raise TokenRequestError(400, "invalid_request", f"parameter {name!r} given twice")
        form[name] = value
    return form


class TokenEndpoint:
    def __init__(self, config: ConfigFile, ring: KeyRing, clock: Callable[[], float]) -> None:
        self.auth = config.gateway.auth
        self.issuer, self.audience = issuer_of(config), audience_of(config)
        self.ring, self.clock = ring, clock

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except TokenRequestError as exc:
            log.info("token request refused: %s: %s", exc.error, exc.description)
            return _error(exc.status, exc.error, exc.description, exc.headers)

    async def _handle(self, request: Request) -> Response:
        form = await _form(request)
        header = request.headers.get("authorization", "")
        basic = header[:6].lower() == "basic "
        if basic and ("client_secret" in form):
            raise TokenRequestError(400, "invalid_request", "use one client authentication method, not two")
        if basic:
            candidates = _basic_credentials(header)
            if form.get("client_id", candidates[0][0]) not in {c[0] for c in candidates}:
                raise TokenRequestError(400, "invalid_request", "client_id differs from Basic credentials")
        elif "client_id" in form and "client_secret" in form:
            candidates = [(form["client_id"], form["client_secret"])]
        else:
            raise TokenRequestError(
                401,
                "invalid_client",
                "client authentication required (client_secret_basic or client_secret_post)",
            )
        grant_type = form.get("grant_type")
        if not grant_type:
            raise TokenRequestError(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise TokenRequestError(400, "unsupported_grant_type", "only client_credentials is supported")
        client_id, client = await self._authenticate(candidates, basic)
        requested: list[str] | None = None
        if "scope" in form:
            requested = form["scope"].split()
            bad = [s for s in requested if parse_scope(s) is None]
            if bad:
                raise TokenRequestError(400, "invalid_scope", f"not a scope of this server: {bad[0][:80]!r}")
        resource = form.get("resource")
        if resource is not None and resource.rstrip("/") != self.audience.rstrip("/"):
            raise TokenRequestError(
                400, "invalid_target", f"this server issues tokens for {self.audience} only"
            )
        scopes = grant(requested, scopes_for_roles(client.roles, self.auth.roles))
        if requested and not scopes:
            raise TokenRequestError(
                400, "invalid_scope", "none of the requested scopes is granted to this client"
            )
        issued = await anyio.to_thread.run_sync(
            lambda: issue_token(
                self.ring,
                issuer=self.issuer,
                audience=self.audience,
                client_id=client_id,
                roles=client.roles,
                scopes=scopes,
                ttl_s=self.auth.token_ttl,
                now=self.clock(),
            )
        )
        log.info("token issued: client %s, kid %s, %d scopes", client_id, issued.kid, len(issued.scopes))
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": " ".join(issued.scopes),
        }
        return JSONResponse(body, headers=NO_STORE)

    async def _authenticate(
        self, candidates: list[tuple[str, str]], basic: bool
    ) -> tuple[str, AuthClientSpec]:
        for client_id, secret in candidates:
            client = self.auth.clients.get(client_id)
            # Hash even for an unknown client: the answer takes as long either way. In a thread:
            # scrypt takes about 0.1 s and must not stall the gateway's event loop.
            stored = client.secret_hash if client else dummy_hash()
            if await anyio.to_thread.run_sync(verify_secret, secret, stored) and client is not None:
                return client_id, client
        raise TokenRequestError(401, "invalid_client", "unknown client or wrong secret", basic=basic)


def metadata(config: ConfigFile) -> dict[str, Any]:
    """RFC 8414 authorization server metadata of the built-in issuer."""
    issuer = issuer_of(config)
    auth = config.gateway.auth
    meta: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "authorization_endpoint": f"{issuer}/authorize",
        "response_types_supported": [],
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes_for_roles(auth.roles, auth.roles),  # every role's
        "service_documentation": None,
    }
    if auth.users:
        meta["response_types_supported"] = ["code"]
        meta["grant_types_supported"] = ["authorization_code", "refresh_token", "client_credentials"]
        meta["code_challenge_methods_supported"] = ["S256"]
        meta["authorization_response_iss_parameter_supported"] = True
        meta["token_endpoint_auth_methods_supported"] += ["none"]
        meta["revocation_endpoint"] = f"{issuer}/revoke"
        meta["revocation_endpoint_auth_methods_supported"] = [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ]
        if auth.registration.enabled:
            meta["registration_endpoint"] = f"{issuer}/register"
        if auth.registration.metadata_documents:
            meta["client_id_metadata_document_supported"] = True
    return meta


def auth_routes(
    config: ConfigFile, *, ring: KeyRing | None = None, clock: Callable[[], float] = time.time
) -> list[BaseRoute]:
    """The built-in issuer's routes (none with an external issuer). `ring` and `clock` are for
    tests and for sharing one key ring with the verifier."""
    if config.gateway.auth.external is not None or not config.gateway.auth.enabled:
        return []
    ring = ring or build_key_ring(config, clock=clock)
    ring.signer()  # the first gateway to start makes the first key; a bad passphrase fails here
    base = urlparse(issuer_of(config)).path.rstrip("/")
    meta = {k: v for k, v in metadata(config).items() if v is not None}

    async def jwks(request: Request) -> Response:
        keys = await anyio.to_thread.run_sync(ring.jwks)
        return JSONResponse(keys, headers={"Cache-Control": "public, max-age=60"})

    async def as_metadata(request: Request) -> Response:
        return JSONResponse(meta, headers={"Cache-Control": "public, max-age=300"})

    async def authorize(request: Request) -> Response:
        return _error(
            400,
            "unsupported_response_type",
            "this server issues tokens by client credentials only (POST /token)",
        )

    endpoint = TokenEndpoint(config, ring, clock)

    async def token(request: Request) -> Response:
        return await endpoint(request)

    common: list[BaseRoute] = [
        Route(f"{base}/.well-known/jwks.json", jwks, methods=["GET"]),
        Route(f"/.well-known/oauth-authorization-server{base}", as_metadata, methods=["GET"]),
    ]
    if config.gateway.auth.users:
        from gateway.auth.flows import interactive_routes

        return interactive_routes(config, ring, base, request_response(token), clock=clock) + common
    return [
        Route(f"{base}/token", token, methods=["POST"]),
        Route(f"{base}/authorize", authorize, methods=["GET", "POST"]),
        *common,
    ]
