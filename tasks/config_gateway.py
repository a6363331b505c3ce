"""The config file's `gateway` section: the MCP front door (gateway/). Each sub-section belongs
to one part of it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.config_base import Section as _Section
from tasks.redis_urls import is_redis_url

# A scope that grants MCP operations: `<kind>:<server>/<name>`, where server and name are each a
# name or `*`, and `<kind>:*` is short for `<kind>:*/*` (docs/security-auth.md). The grammar lives
# here so the config file is checked without importing the gateway; gateway/auth/scopes.py uses it.
SCOPE_KINDS = ("tools:call", "resources:read", "prompts:get")
SCOPE_PATTERN = re.compile(
    r"^(?P<kind>tools:call|resources:read|prompts:get):"
    r"(?:(?P<all>\*)|(?P<server>\*|[A-Za-z0-9][A-Za-z0-9_-]{0,62})/(?P<name>\*|[^\s*]{1,256}))$"
)
# `scrypt$<log2 N>$<r>$<p>$<salt, base64url>$<hash, base64url>`, made by `agentful keys hash-secret`.
SECRET_HASH_PATTERN = re.compile(r"^scrypt(\$\d{1,2}){3}\$[A-Za-z0-9_-]{16,}\$[A-Za-z0-9_-]{32,}$")


def check_scope(scope: str) -> str:
    """The scope itself if it follows the grammar, else ValueError saying what one looks like."""
    if not SCOPE_PATTERN.match(scope):
        raise ValueError(
            f"{scope!r} is not a scope: use tools:call:*, tools:call:<server>/*, tools:call:<server>/<tool> "
            f"or tools:call:*/<tool> (the same with resources:read or prompts:get)"
        )
    return scope


class AuthClientSpec(_Section):
    """One OAuth client of the built-in issuer (client credentials grant)."""

    secret_hash: str = Field(description="from `agentful keys hash-secret`; never the secret itself")
    roles: list[str] = Field(default_factory=list)

    @field_validator("secret_hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        if not SECRET_HASH_PATTERN.match(value):
            raise ValueError("must be a hash made by `agentful keys hash-secret` (scrypt$...), not a secret")
        return value


class AuthUserSpec(_Section):
    """A person who logs in on the gateway's own login page (authorization code flow, for MCP
    clients such as Claude Code): the scopes of their roles are what their clients may get."""

    password_hash: str = Field(
        description="`agentful keys hash-secret --stdin` of the password; never the password"
    )
    roles: list[str] = Field(default_factory=list)

    @field_validator("password_hash")
    @classmethod
    def _hashed(cls, value: str) -> str:
        return AuthClientSpec._hashed(value)


class AuthRegistrationSection(_Section):
    """Dynamic client registration (RFC 7591) for interactive clients, with its limits."""

    enabled: bool = Field(default=True, description="with users set: POST /register is open")
    per_source_per_hour: int = Field(
        default=20, ge=1, description="registrations one address may make an hour"
    )
    unused_client_days: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="a client not used for this long is forgotten"
    )
    max_bytes: int = Field(
        default=16_384, ge=1024, le=1_048_576, description="a bigger registration is refused"
    )
    metadata_documents: bool = Field(default=True, description="https client ids: read their metadata there")
    metadata_private_hosts: bool = Field(
        default=False, description="fetch metadata documents from loopback and private addresses too"
    )
    metadata_ca_file: str | None = Field(default=None, description="unset: the system's CAs verify documents")


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]  # never none, never HS*


class ExternalIssuerSection(_Section):
    """Tokens issued by another authorization server (any OIDC provider), checked with its JWKS."""

    issuer: str = Field(min_length=1, description="the exact `iss` of its tokens")
    audience: str = Field(min_length=1, description="the `aud` its tokens carry for this gateway")
    jwks_url: str
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256", "ES256"), min_length=1)
    roles_claim: str = Field(default="roles", min_length=1, description="dotted: realm_access.roles")
    client_id_claim: str = Field(default="client_id", min_length=1, description="falls back to azp, then sub")

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


class GatewayAuthSection(_Section):
    """OAuth 2.1 client credentials, JWT access tokens, roles and scopes (gateway/auth/)."""

    enabled: bool = False
    issuer: str | None = Field(default=None, description="unset: the gateway's own http(s)://host:port")
    audience: str | None = Field(default=None, description="unset: <issuer>/mcp, the MCP endpoint")
    token_ttl: int = Field(default=3600, gt=0, le=86_400, description="seconds an access token lives")
    algorithm: Literal["ES256", "RS256"] = "ES256"
    clients: dict[str, AuthClientSpec] = Field(default_factory=dict)
    roles: dict[str, list[str]] = Field(default_factory=dict, description="role -> scopes")
    rotation_days: float = Field(default=30.0, gt=0, allow_inf_nan=False, description="signing key age")
    key_store: str | None = Field(
        default=None, description="redis:// URL or a directory; unset: the cluster's Redis or <data_dir>/keys"
    )
    key_passphrase_env: str | None = Field(
        default=None, description="env var whose value encrypts the private keys at rest"
    )
    leeway_s: int = Field(default=30, ge=0, le=300, description="clock skew allowed on exp, nbf, iat")
    max_token_bytes: int = Field(default=8192, ge=512, description="longer bearer tokens are refused unread")
    external: ExternalIssuerSection | None = Field(default=None, description="set: verify its tokens instead")
    users: dict[str, AuthUserSpec] = Field(
        default_factory=dict, description="set: the authorization code flow, with a login page, is on"
    )
    registration: AuthRegistrationSection = AuthRegistrationSection()
    refresh_token_days: float = Field(
        default=30.0, gt=0, le=365, allow_inf_nan=False, description="how long a refresh token lives unused"
    )

    @field_validator("roles")
    @classmethod
    def _role_scopes(cls, roles: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, scopes in roles.items():
            for scope in scopes:
                try:
                    check_scope(scope)
                except ValueError as exc:
                    raise ValueError(f"roles.{role}: {exc}") from None
        return roles

    @model_validator(mode="after")
    def _consistent(self) -> GatewayAuthSection:
        for kind, entries in (("client", self.clients), ("user", self.users)):
            for name, entry in entries.items():
                if not name or ":" in name or any(c.isspace() for c in name) or len(name) > 128:
                    raise ValueError(
                        f"{kind}s: {name!r} cannot name a {kind} (empty, ':', whitespace, over 128)"
                    )
                unknown = [r for r in entry.roles if r not in self.roles]
                if unknown:
                    raise ValueError(
                        f"{kind}s.{name}.roles: unknown role {unknown[0]!r} "
                        f"(roles: {', '.join(sorted(self.roles)) or 'none'})"
                    )
        if self.external is not None and self.users:
            raise ValueError("users: the login page belongs to the built-in issuer, not to an external one")
        if self.external is not None and self.clients:
            raise ValueError("clients: the built-in issuer's clients cannot be used with an external issuer")
        for url_field in ("issuer", "audience"):
            value = getattr(self, url_field)
            if value is not None and self.external is None and not value.startswith(("http://", "https://")):
                raise ValueError(f"{url_field}: must start with http:// or https://, got {value!r}")
        return self


class GatewayTlsSection(_Section):
    """TLS 1.3 for the gateway's HTTP endpoint, and optional mTLS (gateway/security/)."""

    cert_file: str | None = Field(default=None, description="set: HTTPS only, TLS 1.3 minimum (PEM chain)")
    key_file: str | None = Field(default=None, description="unset: the key is in cert_file")
    client_ca_file: str | None = Field(default=None, description="set: mTLS, client certs required")

    @model_validator(mode="after")
    def _needs_cert(self) -> GatewayTlsSection:
        if self.cert_file is None and (self.key_file is not None or self.client_ca_file is not None):
            raise ValueError("keyFile and clientCaFile need certFile (the gateway's own certificate)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class GatewayRateLimitSection(_Section):
    """Per-client token bucket shared through Redis (gateway/security/)."""

    enabled: bool = False
    rate: float = Field(default=20.0, gt=0, allow_inf_nan=False, description="requests per second refilled")
    burst: int = Field(default=40, ge=1, description="bucket size: requests allowed at once")
    redis_url: str | None = Field(default=None, description="unset: the catalog store's (broker or backend)")
    fail_open: bool = Field(default=True, description="Redis unreachable: let requests through, logged")

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        if url is not None and not is_redis_url(url):
            scheme = url.partition("://")[0] if "://" in url else "none"  # the rest may hold a password
            raise ValueError(
                f"redisUrl must be a redis://, rediss://, unix:// or sentinel:// URL, not scheme {scheme!r}"
            )
        return url


class GatewayAuditSection(_Section):
    """One JSON line per call (gateway/security/)."""

    enabled: bool = True
    path: str | None = Field(default=None, description="unset: <data_dir>/logs/audit.jsonl")


class GatewaySection(_Section):
    """`agentful gateway`: one MCP endpoint (stdio or Streamable HTTP) for the whole cluster."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers answered (DNS-rebinding protection): name, name:port or name:*; "
        "empty: the loopback names when bound to loopback, any host otherwise",
    )
    separator: str = Field(
        default="__",
        min_length=1,
        max_length=8,
        pattern=r"^[A-Za-z0-9_.\-/]+$",
        description="between server and tool names",
    )
    json_response: bool = True
    default_server: str | None = Field(default=None, description="its tools and prompts also unprefixed")
    refresh_s: float = Field(default=1.0, gt=0, description="how often the tool list is re-read")
    coalesce: bool = Field(
        default=True,
        description="tools/call requests that arrive in the same turn of the event loop travel as "
        "one batch message (tasks.call_tools); off: one call_tool message each",
    )
    unserved_wait_s: float = Field(
        default=10.0, ge=0, le=3600, description="how long a call waits for a worker of a server none runs"
    )
    auth: GatewayAuthSection = GatewayAuthSection()
    tls: GatewayTlsSection = GatewayTlsSection()
    rate_limit: GatewayRateLimitSection = GatewayRateLimitSection()
    audit: GatewayAuditSection = GatewayAuditSection()
