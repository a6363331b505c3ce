"""The config file's `autoscaling` section: beat's scaling policy and provider (beat/autoscale.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.config_base import Section as _Section


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
