"""The JSON configuration file: which MCP servers a host runs, and the seed's `mcp` sections.

The `mcp.server` / `mcp.client` sections follow the seed's configuration reference (camelCase
keys); `servers` names each MCP server, stdio (`command`, `args`, `env`, `cwd`) or Streamable
HTTP (`url`, `headers`); `schedules` names periodic tool calls that beat submits. Unknown keys
are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

from celery.schedules import ParseException
from celery.schedules import crontab as celery_crontab
from pydantic import Field, ValidationError, field_validator, model_validator

from tasks.config_autoscaling import AutoscalingSection
from tasks.config_base import Section as _Section
from tasks.config_gateway import GatewaySection
from tasks.config_projects import AgentsSection, IsolationSection, ProjectsSection
from tasks.errors import ConfigError

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


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


ServerKind = Literal["claude-code", "codegen"]
ROOT = Path(__file__).resolve().parent.parent


def claude_command() -> str:
    """Claude Code from the project's node_modules (package.json pins it), else `claude` on PATH."""
    local = ROOT / "node_modules" / ".bin" / "claude"
    return str(local) if local.exists() else "claude"


def _preset(kind: ServerKind, raw: dict[str, Any]) -> dict[str, Any]:
    """What a `kind` stands for; the entry's own keys win. Placeholders: {project}, {workspace},
    {home} (the project's own home directory), filled in per project by the worker."""
    if kind == "claude-code":
        env = {"HOME": "{home}", "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        base = {
            "command": claude_command(),
            "args": ["mcp", "serve"],
            "perProject": True,
            "cwd": "{workspace}",
        }
    else:  # codegen: the code-generation server this project ships (workers/servers/codegen.py)
        env = {}
        base = {"command": sys.executable, "args": ["-m", "workers.servers.codegen"]}
    out = {**base, **raw}
    out["env"] = {**env, **(raw.get("env") or {})}
    return out


class ServerSpec(_Section):
    """One MCP server: a stdio command, or a Streamable HTTP URL; or a `kind` this project knows
    (`claude-code`: `claude mcp serve`, one session per project; `codegen`: its code generator)."""

    kind: ServerKind | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    oauth: ServerOAuthSpec | None = Field(default=None, description="Streamable HTTP: client credentials")
    call_timeout_s: float = Field(default=60.0, gt=0, description="default timeout of one tool call")
    start_timeout_s: float = Field(default=30.0, gt=0, description="how long connecting may take")
    batch_concurrency: int = Field(  # le: tasks.batch.MAX_BATCH, the calls of one message
        default=16, ge=1, le=100, description="calls of one batch message that run at once on the session"
    )
    per_project: bool = Field(default=False, description="one session per project, in its workspace")
    max_projects: int = Field(default=8, ge=1, description="per-project sessions kept at once (LRU)")
    idle_timeout_s: float = Field(
        default=600.0, gt=0, description="a per-project session idle this long stops"
    )
    isolation: IsolationSection | None = None
    relay: bool = Field(
        default=False,
        description="the server's sampling, elicitation and log messages reach the caller "
        "(protocol 2025-11-25; its calls run one at a time per session)",
    )

    @model_validator(mode="before")
    @classmethod
    def _kinds(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("kind") in ("claude-code", "codegen"):
            return _preset(raw["kind"], raw)
        return raw

    @model_validator(mode="after")
    def _per_project(self) -> ServerSpec:
        if self.per_project and self.command is None:
            raise ValueError("perProject: only for a stdio server ('command')")
        if self.isolation is not None and not self.per_project:
            raise ValueError("isolation: only for a per-project server ('perProject': true)")
        return self

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


class ConfigFile(_Section):
    """The whole file."""

    mcp: McpSection = McpSection()
    servers: dict[str, ServerSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)
    gateway: GatewaySection = GatewaySection()
    autoscaling: AutoscalingSection = AutoscalingSection()
    projects: ProjectsSection = ProjectsSection()
    agents: AgentsSection = AgentsSection()

    @model_validator(mode="after")
    def _server_names(self) -> ConfigFile:
        for name in self.servers:
            if name == "agent":
                raise ValueError("server name 'agent' is reserved: agent runs (run_agent) are routed by it")
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
