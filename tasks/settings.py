"""Settings, read once at the edge: environment (prefix AGENTFUL_) plus the JSON config file.

`get_settings()` builds them once per process; everything else receives them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.config_file import ConfigFile, load_config_file
from tasks.errors import ConfigError
from tasks.gctune import DEFAULT as GC_DEFAULT
from tasks.redis_urls import is_sentinel_url

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "agentful"
NO_BROKER_URL = "redis://127.0.0.1:1/0"


class Settings(BaseSettings):
    """Every knob of agentful-mcp that is not in the config file."""

    model_config = SettingsConfigDict(env_prefix="AGENTFUL_", extra="ignore", frozen=True)

    broker_url: str | None = Field(
        default=None, description="Redis, Valkey or RabbitMQ URL; unset: the embedded Valkey"
    )
    result_backend: str | None = Field(
        default=None, description="unset: the broker itself if it is Redis/Valkey, else rpc://"
    )
    config: Path | None = Field(default=None, description="path of the JSON config file")
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="embedded broker data, server logs")
    servers: str | None = Field(
        default=None, description="comma-separated servers this worker runs; unset: all in the config"
    )
    result_expires_s: int = Field(default=86_400, gt=0)
    catalog_cache_s: float = Field(default=5.0, ge=0, description="how long a producer trusts its catalog")
    affinity_ttl_s: float = Field(default=3600.0, gt=0, description="how long a project stays on a worker")
    route_cache_s: float = Field(
        default=1.0, ge=0, description="how long a producer trusts its registry copy"
    )
    heartbeat_s: float = Field(default=2.0, gt=0, description="seconds between a worker's heartbeats")
    stop_timeout_s: float = Field(
        default=60.0, gt=0, description="how long a warm stop may wait for running calls before it turns hard"
    )
    workspaces: Path | None = Field(
        default=None,
        description="this host's workspaces root (unset: projects.root, else <data dir>/workspaces)",
    )
    call_expires_s: float = Field(
        default=3600.0, ge=0, description="a call not started by then is dropped (expires); 0: never"
    )
    gc_threshold: str = Field(
        default=GC_DEFAULT,
        pattern=r"^(off|[0-9]+,[0-9]+,[0-9]+)$",
        description="gc thresholds 'gen0,gen1,gen2' of workers and gateway (tasks/gctune.py); off: Python's",
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password[,user:password...]: Flower asks for a login"
    )
    # Telemetry (docs/observability.md, docs/metrics.md).
    log_format: Literal["text", "json"] = Field(default="text", description="json: one JSON object a line")
    metrics_port: str = Field(
        default="off", pattern=r"^(off|auto|[0-9]{1,5})$", description="/metrics of worker and beat"
    )
    metrics_addr: str = Field(default="127.0.0.1", description="address the metrics exporters bind")
    otel_endpoint: str | None = Field(default=None, description="OTLP/HTTP collector URL: tracing on")
    sentry_dsn: str | None = Field(default=None, description="Sentry DSN: error reporting on")
    sentry_environment: str | None = Field(default=None, description="Sentry's environment tag")
    # A rediss:// broker (docs/security-transport.md): the server's certificate is always verified,
    # against this CA bundle (unset: the system's); cert + key: the client certificate it may require.
    broker_ca: Path | None = Field(default=None, description="CA bundle of a rediss:// broker")
    broker_cert: Path | None = Field(default=None, description="client certificate for a rediss:// broker")
    broker_key: Path | None = Field(default=None, description="key of broker_cert")
    # A broker under Redis Sentinel (AGENTFUL_BROKER_URL=sentinel://a:26379;sentinel://b:26379;...,
    # docs/deployment.md "No single broker host").
    sentinel_master: str = Field(
        default="mymaster", min_length=1, description="the Sentinels' name of the primary"
    )
    sentinel_password: SecretStr | None = Field(default=None, description="the Sentinels' own requirepass")
    wait_replicas: int | None = Field(
        default=None,
        ge=0,
        description="replicas a publish and a result wait for (Redis WAIT); unset: 1 over Sentinel, else 0",
    )
    wait_replicas_ms: int = Field(default=2000, gt=0, description="how long a publish waits for them")
    # Celery message signing (its `auth` serializer): on when key, cert and cert store are all set.
    signing_key: Path | None = Field(default=None, description="RSA private key (PEM) that signs messages")
    signing_key_password: SecretStr | None = Field(default=None, description="if signing_key is encrypted")
    signing_cert: Path | None = Field(default=None, description="the certificate of signing_key (PEM)")
    signing_cert_store: Path | None = Field(
        default=None, description="directory (or glob) of the certificates whose signatures are accepted"
    )

    @model_validator(mode="after")
    def _whole_pairs(self) -> Settings:
        signing = {"SIGNING_KEY": self.signing_key, "SIGNING_CERT": self.signing_cert}
        signing["SIGNING_CERT_STORE"] = self.signing_cert_store
        if any(v is not None for v in signing.values()) and any(v is None for v in signing.values()):
            missing = ", ".join(f"AGENTFUL_{k}" for k, v in signing.items() if v is None)
            raise ValueError(f"message signing needs its key, cert and cert store: set {missing}")
        if (self.broker_cert is None) != (self.broker_key is None):
            raise ValueError("AGENTFUL_BROKER_CERT and AGENTFUL_BROKER_KEY go together")
        return self

    def replicas_to_wait(self, broker_url: str) -> int:
        """How many replicas must have a message before `.delay()` returns: replication is
        asynchronous, so a primary that dies right after a publish loses it otherwise."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if is_sentinel_url(broker_url) else 0

    @property
    def signing_enabled(self) -> bool:
        return self.signing_key is not None

    def worker_servers(self, config: ConfigFile) -> list[str]:
        """The servers a worker on this host runs: AGENTFUL_SERVERS, or every configured one."""
        if not self.servers:
            return list(config.servers)
        wanted = [s.strip() for s in self.servers.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in config.servers]
        if unknown:
            raise ConfigError(
                f"AGENTFUL_SERVERS names {', '.join(unknown)}, not in the config file "
                f"(configured: {', '.join(config.servers) or 'none'})"
            )
        return wanted

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def workspaces_root(self, config: ConfigFile) -> Path:
        """Where this host keeps project workspaces."""
        if self.workspaces is not None:
            return self.workspaces
        if config.projects.root:
            return Path(config.projects.root)
        return self.data_dir / "workspaces"

    @property
    def broker_state_file(self) -> Path:
        """Where a running embedded broker writes its URL, for every other process to find."""
        return self.data_dir / "broker.url"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"AGENTFUL_{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else str(e["msg"])
            for e in exc.errors()
        )
        raise ConfigError(f"environment: {problems}") from exc


@lru_cache(maxsize=1)
def get_config() -> ConfigFile:
    """The config file named by AGENTFUL_CONFIG, or an empty one (no servers)."""
    path = get_settings().config
    return load_config_file(path) if path is not None else ConfigFile()


def reset_caches() -> None:
    """Forget the settings and config read so far (tests, and the CLI after it sets env vars)."""
    get_settings.cache_clear()
    get_config.cache_clear()


def resolved_broker_url(settings: Settings) -> str:
    """The broker URL: AGENTFUL_BROKER_URL, else the running embedded broker's, else a clear error."""
    if settings.broker_url:
        return with_redis_tls(settings.broker_url, settings)
    state = settings.broker_state_file
    if state.exists():
        url = state.read_text(encoding="utf-8").strip()
        if url:
            return with_redis_tls(url, settings)
    # Celery needs a URL at import time. This one is refused at once, and the publish path
    # recognises it to say "no broker configured" instead of "connection refused".
    return NO_BROKER_URL


def resolved_result_backend(settings: Settings, broker_url: str) -> str:
    if settings.result_backend:
        return with_redis_tls(settings.result_backend, settings)
    if broker_url.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://", "sentinel://")):
        return broker_url
    return "rpc://"


def with_redis_tls(url: str, settings: Settings) -> str:
    """A rediss:// URL with the TLS parameters of AGENTFUL_BROKER_CA/_CERT/_KEY in its query.

    The URL carries them because every client of the broker reads that one URL: kombu (its
    `ssl_*` query parameters become `broker_use_ssl`), Celery's Redis result backend (the same
    keys become `redis_backend_use_ssl`) and redis-py's `from_url` (catalog, registry, failover).
    `ssl_cert_reqs=required` is always set, so the broker's certificate is verified: kombu's own
    default for a bare rediss:// URL is CERT_NONE. Parameters already in the URL win.
    """
    if not url.startswith("rediss://"):
        return url
    base, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    wanted = {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": settings.broker_ca,
        "ssl_certfile": settings.broker_cert,
        "ssl_keyfile": settings.broker_key,
    }
    for key, value in wanted.items():
        if value is not None and key not in params:
            params[key] = str(value)
    return f"{base}?{urlencode(params, quote_via=quote, safe='/')}"
