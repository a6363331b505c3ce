"""Settings, read once at the edge: environment (prefix AGENTFUL_) plus the JSON config file.

`get_settings()` builds them once per process; everything else receives them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.config_file import ConfigFile, load_config_file
from tasks.errors import ConfigError

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
            f"AGENTFUL_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors() if e["loc"]
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
        return settings.broker_url
    state = settings.broker_state_file
    if state.exists():
        url = state.read_text(encoding="utf-8").strip()
        if url:
            return url
    # Celery needs a URL at import time. This one is refused at once, and the publish path
    # recognises it to say "no broker configured" instead of "connection refused".
    return NO_BROKER_URL


def resolved_result_backend(settings: Settings, broker_url: str) -> str:
    if settings.result_backend:
        return settings.result_backend
    if broker_url.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
        return broker_url
    return "rpc://"
