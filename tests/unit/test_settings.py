"""Settings: which servers a worker runs, and how broker / result-backend URLs are resolved."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import settings as settings_module
from tasks.config_file import ConfigFile
from tasks.errors import ConfigError
from tasks.settings import NO_BROKER_URL, Settings, resolved_broker_url, resolved_result_backend


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGENTFUL_* variable of the surrounding environment (or of tests/conftest.py) leaks in."""
    for key in list(os.environ):
        if key.upper().startswith("AGENTFUL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def reset_caches() -> Iterator[None]:
    settings_module.reset_caches()
    yield
    settings_module.reset_caches()


def config(*names: str) -> ConfigFile:
    return ConfigFile.model_validate({"servers": {n: {"command": "x"} for n in names}})


# --- worker_servers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "configured", "expected"),
    [
        (None, ("time", "git", "web"), ["time", "git", "web"]),
        ("", ("time", "git"), ["time", "git"]),
        (None, (), []),
        ("git", ("time", "git", "web"), ["git"]),
        ("web,time", ("time", "git", "web"), ["web", "time"]),
        (" git , time ,", ("time", "git"), ["git", "time"]),
        (",,git,,", ("time", "git"), ["git"]),
    ],
)
def test_worker_servers(
    tmp_path: Path, servers: str | None, configured: tuple[str, ...], expected: list[str]
) -> None:
    s = Settings(data_dir=tmp_path, servers=servers)

    assert s.worker_servers(config(*configured)) == expected


@pytest.mark.parametrize(
    ("servers", "configured", "named", "listed"),
    [
        ("gti", ("time", "git"), "gti", "time, git"),
        ("git,nope,also", ("git",), "nope, also", "git"),
        ("git", (), "git", "none"),
    ],
)
def test_worker_servers_unknown_name(
    tmp_path: Path, servers: str, configured: tuple[str, ...], named: str, listed: str
) -> None:
    s = Settings(data_dir=tmp_path, servers=servers)

    with pytest.raises(ConfigError) as info:
        s.worker_servers(config(*configured))

    assert str(info.value) == (
        f"AGENTFUL_SERVERS names {named}, not in the config file (configured: {listed})"
    )


def test_environment_is_read_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFUL_SERVERS", "git")
    monkeypatch.setenv("AGENTFUL_CATALOG_CACHE_S", "0.25")

    s = Settings(data_dir=tmp_path)

    assert s.servers == "git"
    assert s.catalog_cache_s == 0.25
    assert Settings(data_dir=tmp_path, servers="time").servers == "time"  # explicit beats env


def test_paths_derive_from_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)

    assert s.log_dir == tmp_path / "logs"
    assert s.broker_state_file == tmp_path / "broker.url"


# --- resolved_broker_url -----------------------------------------------------------------------


def test_broker_url_from_settings_wins_over_state_file(tmp_path: Path) -> None:
    (tmp_path / "broker.url").write_text("redis://127.0.0.1:7777/0\n")
    s = Settings(data_dir=tmp_path, broker_url="amqp://guest:guest@rabbit:5672//")

    assert resolved_broker_url(s) == "amqp://guest:guest@rabbit:5672//"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("redis://127.0.0.1:7777/0\n", "redis://127.0.0.1:7777/0"),
        ("  redis://127.0.0.1:7777/0  \n\n", "redis://127.0.0.1:7777/0"),
        ("", NO_BROKER_URL),
        ("\n  \n", NO_BROKER_URL),
    ],
)
def test_broker_url_from_state_file(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "broker.url").write_text(content)

    assert resolved_broker_url(Settings(data_dir=tmp_path)) == expected


def test_no_broker_anywhere(tmp_path: Path) -> None:
    assert resolved_broker_url(Settings(data_dir=tmp_path / "never-created")) == NO_BROKER_URL
    assert resolved_broker_url(Settings(data_dir=tmp_path, broker_url="")) == NO_BROKER_URL


# --- resolved_result_backend -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@cache:6379/2", "redis://:pw@cache:6379/2"),
        ("rediss://cache:6380/0", "rediss://cache:6380/0"),
        ("valkey://cache:6379/0", "valkey://cache:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("amqp://guest:guest@rabbit:5672//", "rpc://"),
        ("pyamqp://rabbit//", "rpc://"),
        ("amqps://rabbit//", "rpc://"),
        ("sqs://", "rpc://"),
    ],
)
def test_result_backend_follows_broker(tmp_path: Path, broker: str, expected: str) -> None:
    assert resolved_result_backend(Settings(data_dir=tmp_path), broker) == expected


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:6379/0", "amqp://rabbit//"])
def test_explicit_result_backend_wins(tmp_path: Path, broker: str) -> None:
    s = Settings(data_dir=tmp_path, result_backend="redis://results:6379/5")

    assert resolved_result_backend(s, broker) == "redis://results:6379/5"


# --- get_settings / get_config (environment read once) ----------------------------------------


@pytest.mark.usefixtures("reset_caches")
def test_get_settings_names_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFUL_RESULT_EXPIRES_S", "0")

    with pytest.raises(ConfigError) as info:
        settings_module.get_settings()

    assert str(info.value).startswith("environment: AGENTFUL_RESULT_EXPIRES_S: ")
    assert "greater than 0" in str(info.value)


@pytest.mark.usefixtures("reset_caches")
def test_get_config_reads_the_named_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"servers": {"time": {"command": "x"}}}')
    monkeypatch.setenv("AGENTFUL_CONFIG", str(path))

    assert list(settings_module.get_config().servers) == ["time"]
    assert settings_module.get_config() is settings_module.get_config()  # read once


@pytest.mark.usefixtures("reset_caches")
def test_get_config_without_file_is_empty() -> None:
    assert settings_module.get_config() == ConfigFile()
