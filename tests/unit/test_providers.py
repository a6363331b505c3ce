"""beat/providers: the exact calls the compose and Kubernetes providers make (the local and the
Celery-pool providers run real workers in tests/integration/test_autoscale_providers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from beat.providers import Provider, ProviderError, make_provider
from beat.providers.compose import ComposeProvider, run_command
from beat.providers.kubernetes import DELETION_COST, KubernetesProvider
from beat.providers.local import LocalProcessProvider
from beat.providers.pool import CeleryPoolProvider
from tasks.config_file import ConfigFile


class Recorder:
    def __init__(self, out: str = "") -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.out = out

    def __call__(self, argv: list[str], timeout_s: float) -> str:
        self.calls.append((argv, timeout_s))
        return self.out


def test_compose_scales_the_one_service_without_recreating() -> None:
    run = Recorder()
    p = ComposeProvider(file="docker/compose.yaml", project="agentful", runner=run, timeout_s=90)
    p.scale_to(4, stop=["w@abc"])
    assert run.calls == [
        (
            ["docker", "compose", "-f", "docker/compose.yaml", "-p", "agentful",
             "up", "--detach", "--scale", "worker=4", "--no-recreate", "worker"],
            90,
        )
    ]  # fmt: skip


def test_compose_counts_running_containers_of_the_service() -> None:
    run = Recorder(out="3f2a\n9b1c\n\n")
    p = ComposeProvider(command=["docker-compose"], service="mcp-worker", runner=run)
    assert p.current() == 2
    assert run.calls[0][0] == ["docker-compose", "ps", "--status", "running", "--quiet", "mcp-worker"]


def test_compose_failure_is_a_provider_error_with_stderr() -> None:
    with pytest.raises(ProviderError, match="no such service"):
        run_command([sys.executable, "-c", "import sys; sys.exit('no such service: wrker')"], 10)
    with pytest.raises(ProviderError, match="No such file"):
        run_command(["/nonexistent/docker", "compose"], 10)
    with pytest.raises(ProviderError):
        ComposeProvider(runner=Recorder()).scale_to(-1)


def test_compose_argv_is_accepted_by_real_compose() -> None:
    """The real Docker Compose v2 binary parses the exact flags (`config` needs no engine)."""
    compose = Path(sys.executable).parent / "docker-compose"
    if not compose.exists():
        pytest.skip("docker-compose not installed in the venv")
    run = Recorder()
    ComposeProvider(command=[str(compose)], runner=run).scale_to(2)
    argv = run.calls[0][0]
    # `up --help` lists every flag it takes: each flag we pass must be one of them
    helptext = subprocess.run(
        [str(compose), "up", "--help"], check=False, capture_output=True, text=True, timeout=30
    ).stdout
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in helptext, flag


class FakeApps:
    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def read_namespaced_deployment_scale(self, **kw: Any) -> Any:
        self.calls.append(("read_namespaced_deployment_scale", kw))
        return SimpleNamespace(spec=SimpleNamespace(replicas=self.replicas))

    def patch_namespaced_deployment_scale(self, **kw: Any) -> Any:
        self.calls.append(("patch_namespaced_deployment_scale", kw))
        self.replicas = kw["body"]["spec"]["replicas"]
        return None


class FakeCore:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def patch_namespaced_pod(self, **kw: Any) -> None:
        self.calls.append(("patch_namespaced_pod", kw))
        if self.fail:
            raise RuntimeError("403 forbidden")


def test_kubernetes_reads_and_patches_the_deployment_scale() -> None:
    apps, core = FakeApps(2), FakeCore()
    p = KubernetesProvider(namespace="mcp", deployment="agentful-worker", apps_api=apps, core_api=core)
    assert p.current() == 2
    p.scale_to(5)
    assert apps.calls == [
        ("read_namespaced_deployment_scale", {"name": "agentful-worker", "namespace": "mcp"}),
        (
            "patch_namespaced_deployment_scale",
            {"name": "agentful-worker", "namespace": "mcp", "body": {"spec": {"replicas": 5}}},
        ),
    ]
    assert core.calls == []


def test_kubernetes_marks_idle_pods_before_scaling_down() -> None:
    apps, core = FakeApps(3), FakeCore()
    p = KubernetesProvider(namespace="mcp", deployment="w", apps_api=apps, core_api=core)
    p.scale_to(2, stop=["celery@w-5d8f-abcde"])
    assert core.calls == [
        (
            "patch_namespaced_pod",
            {
                "name": "w-5d8f-abcde",
                "namespace": "mcp",
                "body": {"metadata": {"annotations": {DELETION_COST: "-1000"}}},
            },
        )
    ]
    assert apps.calls[-1][1]["body"] == {"spec": {"replicas": 2}}


def test_kubernetes_scales_even_when_marking_a_pod_fails_but_reports_a_failed_scale() -> None:
    apps = FakeApps(3)
    KubernetesProvider(apps_api=apps, core_api=FakeCore(fail=True)).scale_to(2, stop=["celery@p"])
    assert apps.replicas == 2

    class Broken(FakeApps):
        def patch_namespaced_deployment_scale(self, **kw: Any) -> Any:
            raise RuntimeError("409 conflict")

    with pytest.raises(ProviderError, match="409 conflict"):
        KubernetesProvider(apps_api=Broken(1), core_api=FakeCore()).scale_to(2)


class FakeControl:
    """Celery's control API as the pool provider uses it: inspect().stats() and broadcast()."""

    def __init__(self, sizes: dict[str, int], reply: dict[str, str] | None = None) -> None:
        self.sizes = sizes
        self.reply = reply or {"ok": "pool will grow"}
        self.sent: list[tuple[str, int, list[str]]] = []

    def inspect(self, destination: Any = None, timeout: float = 1.0) -> Any:
        stats = {n: {"pool": {"processes": list(range(s))}} for n, s in self.sizes.items()}
        return SimpleNamespace(stats=lambda: stats)

    def broadcast(self, name: str, arguments: dict[str, int], destination: list[str], **kw: Any) -> Any:
        self.sent.append((name, arguments["n"], destination))
        if "ok" in self.reply:
            self.sizes[destination[0]] += arguments["n"] if name == "pool_grow" else -arguments["n"]
        return [{destination[0]: self.reply}]


def test_pool_provider_plan() -> None:
    control = FakeControl({"a": 1, "b": 3})
    p = CeleryPoolProvider(SimpleNamespace(control=control))
    assert p.current() == 4
    p.scale_to(6)  # one process at a time to the smallest pool
    assert control.sent == [("pool_grow", 2, ["a"])]
    assert control.sizes == {"a": 3, "b": 3}
    control.sent.clear()
    p.scale_to(5, stop=["b"])  # the idle worker named loses one
    assert control.sent == [("pool_shrink", 1, ["b"])]
    control.sent.clear()
    p.scale_to(1)  # never below one process per worker
    assert control.sizes == {"a": 1, "b": 1}
    with pytest.raises(ProviderError, match="not supported"):
        CeleryPoolProvider(
            SimpleNamespace(control=FakeControl({"a": 1}, {"error": "not supported"}))
        ).scale_to(2)


def test_make_provider_builds_each_kind(tmp_path: Path) -> None:
    def section(**kw: Any) -> Any:
        return ConfigFile.model_validate(
            {"servers": {"time": {"command": "x"}}, "autoscaling": kw}
        ).autoscaling

    app = SimpleNamespace(control=None)
    local = make_provider(section(provider="local"), app=app, data_dir=tmp_path, servers=["time"])
    assert isinstance(local, LocalProcessProvider) and local.servers == ["time"]
    assert local.state_dir == tmp_path / "autoscale" / "local"
    pool = make_provider(section(provider="celery-pool"), app=app, data_dir=tmp_path, servers=[])
    compose = make_provider(
        section(provider="compose", compose={"file": "c.yaml"}), app=app, data_dir=tmp_path, servers=[]
    )
    kube = make_provider(section(provider="kubernetes"), app=app, data_dir=tmp_path, servers=[])
    for p, kind in ((local, "local"), (pool, "celery-pool"), (compose, "compose"), (kube, "kubernetes")):
        assert isinstance(p, Provider) and p.name == kind


def test_local_provider_forgets_dead_and_unreadable_records(tmp_path: Path) -> None:
    """A restarted beat trusts a pid only if that process started when the record says."""
    p = LocalProcessProvider(servers=["time"], state_dir=tmp_path, log_dir=tmp_path)
    (tmp_path / "auto-1.json").write_text(
        json.dumps({"node": "auto-1@h", "index": 1, "pid": 1, "created_s": 1.0, "started_at_s": 1.0})
    )  # pid 1 exists, but did not start at 1.0: a reused pid
    (tmp_path / "auto-2.json").write_text("{not json")
    assert p.current() == 0
    assert not (tmp_path / "auto-1.json").exists()
    with pytest.raises(ProviderError):
        p.scale_to(-1)
