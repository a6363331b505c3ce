"""`kubernetes`: a Deployment's replicas, through the official client (`kubernetes` package).

Reads `read_namespaced_deployment_scale` and writes `patch_namespaced_deployment_scale` with
`{"spec": {"replicas": N}}`. Before scaling down, it marks the pods of the idle workers the
policy chose with `controller.kubernetes.io/pod-deletion-cost: "-1000"` so the ReplicaSet
removes those first (a worker's node name is `name@<pod hostname>`, and a pod's hostname is its
name). A removed pod gets SIGTERM: Celery's warm shutdown finishes what it runs; give the pod a
`terminationGracePeriodSeconds` as long as the longest call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from beat.providers.base import ProviderError

log = logging.getLogger(__name__)
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
IDLE_COST = "-1000"


class KubernetesProvider:
    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str = "default",
        deployment: str = "agentful-worker",
        in_cluster: bool | None = None,
        prefer_idle_pods: bool = True,
        apps_api: Any = None,
        core_api: Any = None,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.in_cluster = in_cluster
        self.prefer_idle_pods = prefer_idle_pods
        self._apps = apps_api
        self._core = core_api

    def _load(self) -> None:
        from kubernetes import client
        from kubernetes import config as kube_config

        config: Any = kube_config  # the package is untyped
        if self.in_cluster is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        elif self.in_cluster:
            config.load_incluster_config()
        else:
            config.load_kube_config()
        self._apps = self._apps or client.AppsV1Api()
        self._core = self._core or client.CoreV1Api()

    @property
    def apps(self) -> Any:
        if self._apps is None:
            self._load()
        return self._apps

    @property
    def core(self) -> Any:
        if self._core is None:
            self._load()
        return self._core

    def current(self) -> int:
        try:
            scale = self.apps.read_namespaced_deployment_scale(name=self.deployment, namespace=self.namespace)
        except Exception as exc:
            raise ProviderError(f"cannot read {self.namespace}/{self.deployment}'s scale: {exc}") from exc
        return int(getattr(scale.spec, "replicas", 0) or 0)

    def candidates(self, idle: Mapping[str, float]) -> dict[str, float]:
        return dict(idle)

    def scale_to(self, n: int, *, stop: Sequence[str] = ()) -> None:
        if n < 0:
            raise ProviderError(f"cannot scale {self.deployment} to {n}")
        if self.prefer_idle_pods:
            for node in stop:
                pod = node.split("@", 1)[-1]
                body = {"metadata": {"annotations": {DELETION_COST: IDLE_COST}}}
                try:
                    self.core.patch_namespaced_pod(name=pod, namespace=self.namespace, body=body)
                except Exception as exc:  # advisory only: the scale below still happens
                    log.warning("could not mark pod %s idle for removal: %s", pod, exc)
        try:
            self.apps.patch_namespaced_deployment_scale(
                name=self.deployment, namespace=self.namespace, body={"spec": {"replicas": n}}
            )
        except Exception as exc:
            raise ProviderError(f"cannot scale {self.namespace}/{self.deployment} to {n}: {exc}") from exc
