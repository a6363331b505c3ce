"""Providers: what adds and removes instances for beat's autoscaler, behind one Protocol.

- `local` (LocalProcessProvider): `celery worker` processes on beat's own host.
- `celery-pool` (CeleryPoolProvider): the pool processes of running prefork workers, through
  Celery's `pool_grow` / `pool_shrink` control commands.
- `compose` (ComposeProvider): `docker compose up -d --scale worker=N --no-recreate worker`.
- `kubernetes` (KubernetesProvider): a Deployment's replicas, through the official client.

An instance is whatever the provider counts: a worker process, a pool process, a container, a
pod. `scale_to(n, stop=...)` names the idle instances the policy chose to remove; a provider
that can choose (local, celery-pool, kubernetes through the pod deletion cost) removes those.

The Protocol and ProviderError live in `base` (importable from here too); `make_provider` picks one.
"""

from __future__ import annotations

from typing import Any

from beat.providers.base import Provider, ProviderError


def make_provider(section: Any, *, app: Any, data_dir: Any, servers: list[str]) -> Provider:
    """The provider named by `autoscaling.provider` (a tasks.config_file.AutoscalingSection)."""
    from pathlib import Path

    kind = section.provider
    if kind == "local":
        from beat.providers.local import LocalProcessProvider

        local = section.local
        return LocalProcessProvider(
            servers=list(local.servers) if local.servers is not None else servers,
            state_dir=Path(local.state_dir) if local.state_dir else Path(data_dir) / "autoscale" / "local",
            log_dir=Path(data_dir) / "logs",
            pool=local.pool,
            concurrency=local.concurrency,
            prefetch=local.prefetch,
            name_prefix=local.name_prefix,
            stop_timeout_s=local.stop_timeout_s,
        )
    if kind == "celery-pool":
        from beat.providers.pool import CeleryPoolProvider

        pool = section.celery_pool
        return CeleryPoolProvider(app, workers=list(pool.workers), timeout_s=pool.timeout_s)
    if kind == "compose":
        from beat.providers.compose import ComposeProvider

        c = section.compose
        return ComposeProvider(
            command=list(c.command), file=c.file, project=c.project, service=c.service, timeout_s=c.timeout_s
        )
    if kind == "kubernetes":
        from beat.providers.kubernetes import KubernetesProvider

        k = section.kubernetes
        return KubernetesProvider(
            namespace=k.namespace,
            deployment=k.deployment,
            in_cluster=k.in_cluster,
            prefer_idle_pods=k.prefer_idle_pods,
        )
    raise ProviderError(f"autoscaling.provider: unknown provider {kind!r}")


__all__ = ["Provider", "ProviderError", "make_provider"]
