"""The gateway's TokenVerifier (the MCP SDK's protocol): the built-in issuer's keys, or an external
issuer's JWKS. The SDK's bearer middleware turns a None into 401 with WWW-Authenticate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import anyio
import jwt
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

from gateway.auth.keys import KeyRing, open_key_store
from gateway.auth.scopes import scopes_for_roles
from gateway.auth.tokens import (
    RejectedTokenError,
    claim_path,
    decode,
    scopes_claim,
    strings,
    unverified_header,
)
from tasks.config_file import ConfigFile
from tasks.config_gateway import ExternalIssuerSection, GatewayAuthSection
from tasks.settings import get_settings

log = logging.getLogger(__name__)


def issuer_of(config: ConfigFile) -> str:
    """The built-in issuer's URL: `gateway.auth.issuer`, else the gateway's own origin."""
    auth, gw = config.gateway.auth, config.gateway
    if auth.external is not None:
        return auth.external.issuer
    if auth.issuer:
        return auth.issuer.rstrip("/")
    scheme = "https" if gw.tls.cert_file else "http"
    host = f"[{gw.host}]" if ":" in gw.host else gw.host
    return f"{scheme}://{host}:{gw.port}"


def resource_of(config: ConfigFile) -> str:
    """The MCP endpoint as a resource (RFC 9728 / RFC 8707): `audience`, else <issuer>/mcp."""
    auth = config.gateway.auth
    if auth.audience and auth.external is None:
        return auth.audience
    if auth.issuer and auth.external is None:
        return f"{auth.issuer.rstrip('/')}/mcp"
    gw = config.gateway
    scheme = "https" if gw.tls.cert_file else "http"
    host = f"[{gw.host}]" if ":" in gw.host else gw.host
    return f"{scheme}://{host}:{gw.port}/mcp"


def audience_of(config: ConfigFile) -> str:
    auth = config.gateway.auth
    return auth.external.audience if auth.external is not None else resource_of(config)


def auth_settings(config: ConfigFile) -> AuthSettings:
    """What the gateway passes to the SDK's streamable app with the verifier: protected resource
    metadata (RFC 9728) naming our issuer, and the audience check left to the verifier."""
    return AuthSettings(
        issuer_url=issuer_of(config),  # type: ignore[arg-type]  # pydantic validates the str
        resource_server_url=resource_of(config),  # type: ignore[arg-type]
        validate_token_resource=False,  # the verifier checks `aud` itself (external audiences differ)
    )


_VERIFIED_MAX = 10_000  # tokens a verifier remembers as checked


class LocalVerifier:
    """Tokens of the built-in issuer, checked against the key ring (store shared by replicas)."""

    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, auth: GatewayAuthSection) -> None:
        self.ring, self.issuer, self.audience, self.auth = ring, issuer, audience, auth
        self._public: dict[str, Any] = {}  # kid -> public key object, built once
        # token -> (what it grants, its kid): a caller sends the same token with every request,
        # and an ES256 check is ~8% of the gateway's CPU per call (docs/performance.md). A token
        # once valid stays so until it expires or its key leaves the ring (access tokens are not
        # revocable one by one: docs/security-auth.md); both are checked on every hit.
        self._verified: dict[str, tuple[AccessToken, str]] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            if self.ring.stale():  # the store is read off the event loop (at most every RELOAD_S)
                await anyio.to_thread.run_sync(self.ring.keys)
            return self.check(token)
        except RejectedTokenError as exc:
            log.info("bearer token refused: %s", exc)
            return None
        except Exception as exc:  # the key store down: refuse (fail closed), say why
            log.warning("bearer token refused: keys unavailable: %s", type(exc).__name__)
            return None

    def check(self, token: str) -> AccessToken:
        hit = self._verified.get(token)
        if hit is not None:
            access, kid = hit
            until = (access.expires_at or 0) + self.auth.leeway_s
            if self.ring.clock() < until and self.ring.find(kid) is not None:
                return access
            self._verified.pop(token, None)
        access, kid = self._check(token)
        if len(self._verified) >= _VERIFIED_MAX:  # bounded: many callers, or a flood of tokens
            self._verified.clear()
        self._verified[token] = (access, kid)
        return access

    def _check(self, token: str) -> tuple[AccessToken, str]:
        header = unverified_header(token, self.auth.max_token_bytes)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise RejectedTokenError("no kid in header")
        key = self.ring.find(kid)
        if key is None:
            raise RejectedTokenError(f"unknown kid {kid[:64]!r}")
        public = self._public.get(key.kid)
        if public is None:
            public = self._public[key.kid] = jwt.PyJWK(key.public_jwk).key
        claims = decode(
            token,
            public,
            algorithms=[key.alg],
            issuer=self.issuer,
            audience=self.audience,
            now=self.ring.clock(),
            leeway_s=self.auth.leeway_s,
        )
        client_id = claims.get("client_id")
        if not isinstance(client_id, str):
            raise RejectedTokenError("claim client_id missing")
        access = AccessToken(
            token=token,
            client_id=client_id,
            scopes=scopes_claim(claims),
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=claims.get("sub"),
            claims={"iss": claims["iss"], "jti": claims["jti"], "roles": strings(claims.get("roles"))},
        )
        return access, kid


class ExternalVerifier:
    """Tokens of another issuer (any OIDC provider): its keys from its JWKS URL through PyJWT's
    PyJWKClient (cached; refetched for an unknown kid, at most every 30 s); scopes are the token's
    own scope/scp plus those the config's roles give to its roles claim."""

    def __init__(
        self, ext: ExternalIssuerSection, auth: GatewayAuthSection, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.ext, self.auth, self.clock = ext, auth, clock

    @cached_property
    def jwks(self) -> jwt.PyJWKClient:
        return jwt.PyJWKClient(self.ext.jwks_url, cache_jwk_set=True, lifespan=300, timeout=10)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return await self.check(token)
        except RejectedTokenError as exc:
            log.info("bearer token refused: %s", exc)
            return None

    async def check(self, token: str) -> AccessToken:
        header = unverified_header(token, self.auth.max_token_bytes)
        if header.get("alg") not in self.ext.algorithms:
            raise RejectedTokenError("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise RejectedTokenError("no kid in header")
        try:
            signing = await anyio.to_thread.run_sync(self.jwks.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise RejectedTokenError(f"JWKS unreachable: {type(exc).__name__}") from None
        except jwt.PyJWKClientError:
            raise RejectedTokenError(f"unknown kid {kid[:64]!r}") from None
        claims = decode(
            token,
            signing.key,
            algorithms=list(self.ext.algorithms),
            issuer=self.ext.issuer,
            audience=self.ext.audience,
            now=self.clock(),
            leeway_s=self.auth.leeway_s,
        )
        client_id = next(
            (
                v
                for v in (claims.get(self.ext.client_id_claim), claims.get("azp"), claims.get("sub"))
                if isinstance(v, str)
            ),
            None,
        )
        if client_id is None:
            raise RejectedTokenError(f"no client id ({self.ext.client_id_claim}, azp or sub)")
        roles = strings(claim_path(claims, self.ext.roles_claim))
        scopes = list(dict.fromkeys([*scopes_claim(claims), *scopes_for_roles(roles, self.auth.roles)]))
        return AccessToken(
            token=token,
            client_id=client_id,
            scopes=scopes,
            expires_at=int(claims["exp"]),
            resource=self.ext.audience,
            subject=claims.get("sub") if isinstance(claims.get("sub"), str) else None,
            claims={"iss": claims["iss"], "jti": claims["jti"], "roles": roles},
        )


def build_key_ring(config: ConfigFile, *, clock: Callable[[], float] = time.time) -> KeyRing:
    return KeyRing(open_key_store(config.gateway.auth, get_settings()), config.gateway.auth, clock=clock)


def build_token_verifier(
    config: ConfigFile, *, ring: KeyRing | None = None, clock: Callable[[], float] = time.time
) -> TokenVerifier:
    """The verifier for `gateway.auth`: external issuer if configured, else the built-in one."""
    auth = config.gateway.auth
    if auth.external is not None:
        return ExternalVerifier(auth.external, auth, clock=clock)
    return LocalVerifier(
        ring or build_key_ring(config, clock=clock),
        issuer=issuer_of(config),
        audience=audience_of(config),
        auth=auth,
    )
