"""The JSON configuration file: which MCP servers a host runs, and the seed's `mcp` sections.

The `mcp.server` / `mcp.client` sections follow the seed's configuration reference (camelCase
keys); `servers` names each MCP server, stdio (`command`, `args`, `env`, `cwd`) or Streamable
HTTP (`url`, `headers`); `schedules` names periodic tool calls that beat submits. Unknown keys
are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from celery.schedules import ParseException
from celery.schedules import crontab as celery_crontab
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tasks.errors import ConfigError

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class ServerOAuthSpec(_Section):
    """Client credentials for a Streamable HTTP server behind OAuth: the worker gets a token from
    `tokenUrl` and sends it as a bearer token, renewing it before it expires. The secret comes
    from the environment variable named here, never from the file."""

    token_url: str
    client_id: str = Field(min_length=1)
    client_secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="env var of the secret")
    scope: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    resource: str | None = Field(default=None, description="RFC 8707 resource to ask a token for")

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


class ServerSpec(_Section):
    """One MCP server: a stdio command, or a Streamable HTTP URL."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    oauth: ServerOAuthSpec | None = Field(default=None, description="Streamable HTTP: client credentials")
    call_timeout_s: float = Field(default=60.0, gt=0, description="default timeout of one tool call")
    start_timeout_s: float = Field(default=30.0, gt=0, description="how long connecting may take")

    @model_validator(mode="after")
    def _one_transport(self) -> ServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (Streamable HTTP)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.oauth is not None and self.url is None:
            raise ValueError("oauth: only for a Streamable HTTP server ('url')")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"


class HealthCheckSection(_Section):
    interval: int = Field(default=30_000, gt=0, description="ms between health checks")
    timeout: int = Field(default=5_000, gt=0, description="ms a probe may take")
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)


class LoadBalancingSection(_Section):
    algorithm: Literal["least-load", "round-robin", "weighted", "resource-based", "shared-queue"] = (
        "shared-queue"
    )
    health_check: HealthCheckSection = HealthCheckSection()


class PoolSection(_Section):
    min: int = Field(default=1, ge=0, description="MCP sessions per server per worker process, at least")
    max: int = Field(default=1, ge=1)
    idle_timeout: int = Field(default=300_000, gt=0, description="ms")
    acquire_timeout: int = Field(default=30_000, gt=0, description="ms")


class RetrySection(_Section):
    max_attempts: int = Field(default=3, ge=1)
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    initial_delay: int = Field(default=1_000, ge=0, description="ms")
    max_delay: int = Field(default=30_000, ge=0, description="ms")


class CircuitBreakerSection(_Section):
    threshold: int = Field(default=5, ge=1, description="transport faults in a row that open it")
    timeout: int = Field(default=60_000, gt=0, description="ms it stays open before one probe")


class McpClientSection(_Section):
    pool: PoolSection = PoolSection()
    load_balancing: LoadBalancingSection = LoadBalancingSection()
    retry: RetrySection = RetrySection()
    circuit_breaker: CircuitBreakerSection = CircuitBreakerSection()


class McpServerSection(_Section):
    name: str = "agentful-mcp"
    version: str = "0.1.0"
    max_request_bytes: int = Field(default=1_048_576, gt=0, description="largest arguments payload")


class McpSection(_Section):
    server: McpServerSection = McpServerSection()
    client: McpClientSection = McpClientSection()


# The five fields of a cron line, in its order, by the names of celery.schedules.crontab.
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# Beat's own entries: a schedule may not take their names.
RESERVED_SCHEDULES = frozenset({"health-check", "rotate-signing-keys", "autoscale"})


def parse_crontab(line: str) -> Any:
    """A 5-field cron line ("0 3 * * *": minute hour day-of-month month day-of-week) as Celery's
    crontab (in Celery's timezone, UTC); ValueError naming the field that is wrong."""
    parts = line.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError(
            f"crontab {line!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    fields = dict(zip(CRON_FIELDS, parts, strict=True))
    for name, value in fields.items():
        try:
            celery_crontab(**{name: value})  # Celery's own parser, one field at a time
        except (ValueError, ParseException) as exc:
            raise ValueError(f"crontab {line!r}: {name} {value!r} is invalid: {exc}") from None
    return celery_crontab(**fields)


class ScheduleSpec(_Section):
    """One periodic tool call that beat submits: every `every` seconds, or on a `crontab` line."""

    server: str
    tool: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    every: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="seconds")
    crontab: str | None = Field(default=None, description="minute hour day-of-month month day-of-week, UTC")
    priority: int | None = Field(default=None, ge=0, le=9, description="Celery's, as the broker reads it")

    @field_validator("crontab")
    @classmethod
    def _valid_crontab(cls, line: str | None) -> str | None:
        if line is not None:
            parse_crontab(line)
        return line

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.every is None) == (self.crontab is None):
            raise ValueError("give exactly one of 'every' (seconds) or 'crontab' (a 5-field cron line)")
        return self

    def celery_schedule(self) -> Any:
        """What beat's `schedule` takes: seconds, or a celery.schedules.crontab."""
        if self.every is not None:
            return self.every
        return parse_crontab(str(self.crontab))


# -- gateway: the MCP front door (gateway/). Each sub-section belongs to one part of it. --------


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
        for name, client in self.clients.items():
            if not name or ":" in name or any(c.isspace() for c in name):
                raise ValueError(f"clients: {name!r} cannot name a client (empty, ':' or whitespace)")
            unknown = [r for r in client.roles if r not in self.roles]
            if unknown:
                raise ValueError(
                    f"clients.{name}.roles: unknown role {unknown[0]!r} "
                    f"(roles: {', '.join(sorted(self.roles)) or 'none'})"
                )
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
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            scheme = url.partition("://")[0] if "://" in url else "none"  # the rest may hold a password
            raise ValueError(f"redisUrl must be a redis://, rediss:// or unix:// URL, not scheme {scheme!r}")
        return url


class GatewayAuditSection(_Section):
    """One JSON line per call (gateway/security/)."""

    enabled: bool = True
    path: str | None = Field(default=None, description="unset: <data_dir>/logs/audit.jsonl")


class GatewaySection(_Section):
    """`agentful gateway`: one MCP endpoint (stdio or Streamable HTTP) for the whole cluster."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
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
    unserved_wait_s: float = Field(
        default=10.0, ge=0, le=3600, description="how long a call waits for a worker of a server none runs"
    )
    auth: GatewayAuthSection = GatewayAuthSection()
    tls: GatewayTlsSection = GatewayTlsSection()
    rate_limit: GatewayRateLimitSection = GatewayRateLimitSection()
    audit: GatewayAuditSection = GatewayAuditSection()


# -- autoscaling: beat's scaling policy and provider (beat/autoscale/). ----------------------


class AutoscalingTriggersSection(_Section):
    """Scale up when any of these holds (the seed's triggers). Latency and error rate count only
    once `minCalls` calls finished within the window (`autoscaling.windowS`)."""

    cpu_percent: float = Field(default=70.0, gt=0, le=100, description="mean CPU of the workers' hosts")
    cpu_sustain_s: float = Field(default=300.0, ge=0, description="CPU must stay above for this long")
    memory_percent: float = Field(default=80.0, gt=0, le=100, description="highest memory use of a host")
    queue_depth: int = Field(default=100, ge=0, description="calls waiting in the broker, all queues")
    p95_latency_s: float = Field(default=5.0, gt=0, description="95th percentile of call duration")
    error_rate_percent: float = Field(default=1.0, ge=0, le=100, description="failed calls, % of calls")
    min_calls: int = Field(default=20, ge=1, description="calls in the window before latency/errors count")


class LocalProviderSection(_Section):
    """`local`: `celery worker` processes on beat's host."""

    servers: list[str] | None = Field(default=None, description="unset: every configured server")
    pool: Literal["threads", "prefork", "solo"] = "threads"
    concurrency: int = Field(default=16, ge=1)
    prefetch: int | None = Field(default=None, ge=1, description="unset: Celery's worker_prefetch_multiplier")
    name_prefix: str = Field(default="auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
    stop_timeout_s: float = Field(default=300.0, gt=0, description="warm stop, then SIGKILL")
    state_dir: str | None = Field(default=None, description="unset: <data dir>/autoscale/local")


class CeleryPoolProviderSection(_Section):
    """`celery-pool`: grow and shrink running prefork workers' pools (instances = pool processes)."""

    workers: list[str] = Field(default_factory=list, description="node names; empty: every live worker")
    timeout_s: float = Field(default=2.0, gt=0, description="control command reply timeout")


class ComposeProviderSection(_Section):
    """`compose`: `docker compose up -d --scale <service>=N --no-recreate <service>`."""

    command: list[str] = Field(default_factory=lambda: ["docker", "compose"], min_length=1)
    file: str | None = None
    project: str | None = None
    service: str = Field(default="worker", min_length=1)
    timeout_s: float = Field(default=120.0, gt=0)


class KubernetesProviderSection(_Section):
    """`kubernetes`: the replicas of a Deployment, through the official client."""

    namespace: str = Field(default="default", min_length=1)
    deployment: str = Field(default="agentful-worker", min_length=1)
    in_cluster: bool | None = Field(default=None, description="unset: in-cluster, else kubeconfig")
    prefer_idle_pods: bool = Field(default=True, description="mark idle pods to be removed first")


class AutoscalingSection(_Section):
    """The seed's autoscaling: triggers, limits, steps, cooldown, idle shutdown, and the provider
    that adds and removes instances. Every time is in seconds (the key says so: `...S`)."""

    enabled: bool = False
    provider: Literal["local", "celery-pool", "compose", "kubernetes"] = "local"
    interval_s: float = Field(default=30.0, gt=0, description="seconds between evaluations")
    min_instances: int = Field(default=1, ge=0)
    max_instances: int = Field(default=10, ge=1)
    scale_up_percent: float = Field(default=50.0, gt=0, description="add this % of instances, rounded up")
    scale_down_step: int = Field(default=1, ge=1, description="remove at most this many at a time")
    cooldown_s: float = Field(default=300.0, ge=0, description="no change within this long of the last")
    idle_timeout_s: float = Field(default=300.0, gt=0, description="an instance idle this long is removed")
    window_s: float = Field(default=60.0, gt=0, description="latency and error rate over this window")
    triggers: AutoscalingTriggersSection = AutoscalingTriggersSection()
    local: LocalProviderSection = LocalProviderSection()
    celery_pool: CeleryPoolProviderSection = CeleryPoolProviderSection()
    compose: ComposeProviderSection = ComposeProviderSection()
    kubernetes: KubernetesProviderSection = KubernetesProviderSection()

    @model_validator(mode="after")
    def _limits(self) -> AutoscalingSection:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"minInstances ({self.min_instances}) must not exceed maxInstances ({self.max_instances})"
            )
        return self


class ConfigFile(_Section):
    """The whole file."""

    mcp: McpSection = McpSection()
    servers: dict[str, ServerSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)
    gateway: GatewaySection = GatewaySection()
    autoscaling: AutoscalingSection = AutoscalingSection()

    @model_validator(mode="after")
    def _server_names(self) -> ConfigFile:
        for name in self.servers:
            if not SERVER_NAME.match(name):
                raise ValueError(
                    f"server name {name!r} must be 1-63 letters, digits, '_' or '-' (it names a queue)"
                )
            if self.gateway.separator in name:
                raise ValueError(
                    f"server name {name!r} contains gateway.separator {self.gateway.separator!r}: "
                    "the gateway's tool names <server><separator><tool> would be ambiguous"
                )
        return self

    @model_validator(mode="after")
    def _autoscaling_servers(self) -> ConfigFile:
        unknown = [s for s in self.autoscaling.local.servers or [] if s not in self.servers]
        if unknown:
            raise ValueError(
                f"autoscaling.local.servers: {', '.join(unknown)} not configured "
                f"(configured: {', '.join(sorted(self.servers)) or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _schedules_name_servers(self) -> ConfigFile:
        for name, spec in self.schedules.items():
            if not name.strip() or name in RESERVED_SCHEDULES:
                raise ValueError(f"schedules: {name!r} cannot name a schedule (empty or beat's own)")
            if spec.server not in self.servers:
                configured = ", ".join(sorted(self.servers)) or "none"
                raise ValueError(
                    f"schedules.{name}.server: {spec.server!r} is not a configured server "
                    f"(configured: {configured})"
                )
        return self


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_config_file(path: Path) -> ConfigFile:
    """Read and validate a config file; raise ConfigError naming the file and the bad field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    try:
        return ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"config file {path}: {problems}") from exc
