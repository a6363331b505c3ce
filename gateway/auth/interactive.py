"""Interactive OAuth 2.1 for MCP clients (Claude Code, the Inspector, any client of the MCP
authorization spec): the authorization code flow with PKCE (S256 only), dynamic client
registration (RFC 7591), refresh tokens rotated on every use, and the gateway's own login page.

The HTTP side is the MCP SDK's authorization server (`mcp.server.auth`: its /authorize, /token,
/register and /revoke handlers check the requests: PKCE, redirect URIs, client authentication,
code expiry); this module is the `OAuthAuthorizationServerProvider` behind them, which decides:

- who may register (redirect URIs https or loopback only, no fragments; the per-address cap
  and the size limit are in `gateway/auth/routes.py`, before the SDK reads the body),
- what a login grants: the user's roles' scopes (`gateway.auth.roles`), narrowed to what the
  client asked for, exactly as client credentials do,
- that a code or a refresh token works once: used again, it revokes everything its grant
  issued since (a stolen copy is worth nothing once the real client has used it).

Access tokens are the same JWTs client credentials get (gateway/auth/tokens.py), so the
verifier and the scope guard need nothing new; `sub` is the user.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    IdentityAssertionParams,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl

from gateway.auth.grants import Grant, GrantStore, Pending
from gateway.auth.keys import KeyRing
from gateway.auth.metadata_docs import MetadataDocumentError, fetch_client, is_metadata_url
from gateway.auth.redirects import check_redirect_uri
from gateway.auth.scopes import grant, scopes_for_roles
from gateway.auth.tokens import issue_token
from gateway.auth.verifier import audience_of, issuer_of
from tasks.config_file import ConfigFile

log = logging.getLogger(__name__)
DAY_S = 86_400.0
METADATA_CACHE_S = 3600  # a client ID metadata document is read again after this long


class Code(AuthorizationCode):
    family: str
    roles: list[str]


class Refresh(RefreshToken):
    family: str
    roles: list[str]


def _granted(record: Grant) -> dict[str, Any]:
    """What a code and a refresh token of one grant both say."""
    return {
        "client_id": record.client_id,
        "scopes": record.scopes,
        "resource": record.resource,
        "subject": record.subject,
        "family": record.family,
        "roles": record.roles,
    }


class InteractiveProvider:
    """The SDK's `OAuthAuthorizationServerProvider`, backed by `GrantStore` (Redis)."""

    def __init__(
        self,
        config: ConfigFile,
        ring: KeyRing,
        store: GrantStore,
        *,
        login_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = config.gateway.auth
        self.issuer, self.audience = issuer_of(config), audience_of(config)
        self.ring, self.store, self.login_url, self.clock = ring, store, login_url, clock
        self.client_ttl_s = self.auth.registration.unused_client_days * DAY_S
        self.scopes = scopes_for_roles(self.auth.roles, self.auth.roles)  # every role's
        self.refresh_ttl_s = self.auth.refresh_token_days * DAY_S

    # -- clients -------------------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        registration = self.auth.registration
        if registration.metadata_documents and is_metadata_url(client_id):
            return await self._metadata_client(client_id)
        if not client_id or len(client_id) > 128:
            return None
        raw = await self.store.get_client(client_id, self.client_ttl_s)
        return None if raw is None else OAuthClientInformationFull.model_validate_json(raw)

    async def _metadata_client(self, url: str) -> OAuthClientInformationFull | None:
        """A client ID metadata document's client (gateway/auth/metadata_docs.py), read again at
        most every METADATA_CACHE_S; None (and why, in the log) when it is not acceptable."""
        raw = await self.store.get_client(url, METADATA_CACHE_S, touch=False)
        if raw is not None:
            return OAuthClientInformationFull.model_validate_json(raw)
        registration = self.auth.registration
        try:
            client = await fetch_client(
                url,
                scopes=self.scopes,
                private_hosts=registration.metadata_private_hosts,
                ca_file=registration.metadata_ca_file,
            )
        except MetadataDocumentError as exc:
            log.warning("client id metadata document refused: %.200s: %s", url, exc)
            return None
        await self.store.put_client(url, client.model_dump_json(), METADATA_CACHE_S)
        log.info("client id metadata document read: %.200s (%s)", url, (client.client_name or "unnamed")[:80])
        return client

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        uris = [str(u) for u in client_info.redirect_uris or []]
        if not uris:
            raise RegistrationError("invalid_redirect_uri", "at least one redirect_uri is required")
        if len(uris) > 10:
            raise RegistrationError("invalid_redirect_uri", "at most 10 redirect URIs")
        for uri in uris:
            why = check_redirect_uri(uri)
            if why is not None:
                raise RegistrationError("invalid_redirect_uri", f"{uri[:200]!r}: {why}")
        unknown = sorted(set(client_info.grant_types) - {"authorization_code", "refresh_token"})
        if unknown:
            raise RegistrationError(
                "invalid_client_metadata", f"grant type {unknown[0][:80]!r} is not offered"
            )
        if client_info.client_name is not None and len(client_info.client_name) > 200:
            raise RegistrationError("invalid_client_metadata", "client_name over 200 characters")
        await self.store.put_client(
            client_info.client_id or "", client_info.model_dump_json(), self.client_ttl_s
        )
        log.info(
            "client registered: %s (%s), %d redirect URIs",
            client_info.client_id,
            (client_info.client_name or "unnamed")[:80],
            len(uris),
        )

    # -- the authorization request: to the login page ------------------------------------------

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        pending = Pending(
            client_id=client.client_id or "",
            client_name=(client.client_name or client.client_id or "")[:200],
            redirect_uri=str(params.redirect_uri),
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            code_challenge=params.code_challenge,
            state=params.state,
            scopes=params.scopes,
            resource=params.resource,
        )
        request_id = await self.store.put_pending(pending)
        return f"{self.login_url}?request={request_id}"

    async def approve(self, pending: Pending, user: str) -> str | None:
        """The code a user's consent makes (gateway/auth/login.py), or None if none of the
        scopes asked for is one the user's roles give."""
        spec = self.auth.users[user]
        scopes = grant(pending.scopes, scopes_for_roles(spec.roles, self.auth.roles))
        if pending.scopes and not scopes:
            return None
        record = Grant(
            client_id=pending.client_id,
            subject=user,
            scopes=scopes,
            roles=list(spec.roles),
            family=uuid.uuid4().hex,
            resource=pending.resource,
            redirect_uri=pending.redirect_uri,
            redirect_uri_provided_explicitly=pending.redirect_uri_provided_explicitly,
            code_challenge=pending.code_challenge,
        )
        code = await self.store.put_code(record)
        log.info("login: user %s approved client %s, %d scopes", user, pending.client_id, len(scopes))
        return code

    # -- codes ---------------------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> Code | None:
        found = await self.store.get_code(authorization_code)
        # RFC 6749 4.1.2: a code used twice revokes what it issued
        record = await self._unused(found, "an authorization code was used twice", client)
        if record is None:
            return None
        return Code(
            code=authorization_code,
            expires_at=record.expires_at,
            code_challenge=record.code_challenge,
            redirect_uri=AnyUrl(record.redirect_uri),
            redirect_uri_provided_explicitly=record.redirect_uri_provided_explicitly,
            **_granted(record),
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: Code
    ) -> OAuthToken:
        self._check_resource(authorization_code.resource)
        if not await self.store.take_code(authorization_code.code, authorization_code.family):
            await self.store.revoke_family(authorization_code.family)
            raise TokenError("invalid_grant", "authorization code was used already")
        return await self._tokens(client, self._grant_of(authorization_code, authorization_code.scopes))

    # -- refresh tokens ------------------------------------------------------------------------

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> Refresh | None:
        if not refresh_token or len(refresh_token) > 512:
            return None
        found = await self.store.get_refresh(refresh_token)
        # RFC 9700 4.14.2: a rotated token came back: someone copied it
        record = await self._unused(found, "a refresh token was used after its rotation", client)
        if record is None:
            return None
        return Refresh(token=refresh_token, expires_at=int(record.expires_at), **_granted(record))

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: Refresh, scopes: list[str]
    ) -> OAuthToken:
        self._check_resource(refresh_token.resource)
        record = await self.store.take_refresh(refresh_token.token)
        if record is None:  # another request rotated it a moment ago
            await self.store.revoke_family(refresh_token.family)
            raise TokenError("invalid_grant", "refresh token was used already")
        if refresh_token.subject not in self.auth.users:
            raise TokenError("invalid_grant", "the user of this grant is no longer configured")
        return await self._tokens(client, self._grant_of(refresh_token, scopes))

    # -- tokens --------------------------------------------------------------------------------

    async def load_access_token(self, token: str) -> AccessToken | None:
        return None  # JWTs: not revocable one by one; revoking a refresh token ends its family

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        if isinstance(token, Refresh):
            await self.store.revoke_family(token.family)
            log.info("refresh token revoked by its client %s", token.client_id)

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: IdentityAssertionParams
    ) -> OAuthToken:
        raise TokenError("unsupported_grant_type", "this server takes no identity assertions")

    async def _unused(
        self, found: tuple[Grant | None, str | None], what: str, client: OAuthClientInformationFull
    ) -> Grant | None:
        """The grant of a code or refresh token not used before; one used before revokes its family."""
        record, used_by = found
        if used_by is None:
            return record
        if await self.store.revoke_family(used_by):
            log.warning("%s: its family of refresh tokens is revoked (client %s)", what, client.client_id)
        return None

    def _check_resource(self, resource: str | None) -> None:
        if resource is not None and resource.rstrip("/") != self.audience.rstrip("/"):
            raise TokenError("invalid_target", f"this server issues tokens for {self.audience} only")

    def _grant_of(self, source: Code | Refresh, scopes: list[str]) -> Grant:
        # The user's roles as configured now: a role taken away narrows the next refresh.
        spec = self.auth.users.get(source.subject or "")
        roles = list(spec.roles) if spec is not None else []
        allowed = scopes_for_roles(roles, self.auth.roles)
        return Grant(
            client_id=source.client_id,
            subject=source.subject or "",
            scopes=grant(scopes, allowed),
            roles=roles,
            family=source.family,
            resource=source.resource,
        )

    async def _tokens(self, client: OAuthClientInformationFull, record: Grant) -> OAuthToken:
        issued = await anyio.to_thread.run_sync(
            lambda: issue_token(
                self.ring,
                issuer=self.issuer,
                audience=self.audience,
                client_id=record.client_id,
                subject=record.subject,
                roles=record.roles,
                scopes=record.scopes,
                ttl_s=self.auth.token_ttl,
                now=self.clock(),
            )
        )
        refresh = None
        if "refresh_token" in client.grant_types:
            refresh = await self.store.put_refresh(record, self.refresh_ttl_s)
        log.info("token issued: user %s, client %s, kid %s, %d scopes",
                 record.subject, record.client_id, issued.kid, len(issued.scopes))  # fmt: skip
        return OAuthToken(
            access_token=issued.token,
            expires_in=issued.expires_in,
            scope=" ".join(issued.scopes),
            refresh_token=refresh,
        )
