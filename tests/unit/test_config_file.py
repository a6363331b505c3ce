"""load_config_file: good files parse into the right model; bad ones raise ConfigError naming
the file and the offending field path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.config_file import ConfigFile, ServerSpec, load_config_file
from tasks.errors import ConfigError, PermanentError


def write(tmp_path: Path, content: Any, name: str = "agentful.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


FULL = {
    "mcp": {
        "server": {"name": "edge", "version": "9.9.9", "maxRequestBytes": 65536},
        "client": {
            "pool": {"min": 0, "max": 4, "idleTimeout": 1000, "acquireTimeout": 2000},
            "loadBalancing": {
                "algorithm": "round-robin",
                "healthCheck": {
                    "interval": 1500,
                    "timeout": 250,
                    "unhealthyThreshold": 7,
                    "healthyThreshold": 4,
                },
            },
            "retry": {"maxAttempts": 5, "backoffMultiplier": 1.5, "initialDelay": 0, "maxDelay": 100},
        },
    },
    "servers": {
        "git": {
            "command": "uvx",
            "args": ["mcp-server-git", "--repository", "/srv/repo"],
            "env": {"GIT_TRACE": "1", "PATH": "/usr/bin"},
            "cwd": "/srv",
            "callTimeoutS": 12.5,
            "startTimeoutS": 3,
        },
        "remote_1": {
            "url": "https://mcp.example.invalid/mcp",
            "headers": {"Authorization": "Bearer t0k", "X-Trace": "on"},
        },
        "plain-http": {"url": "http://127.0.0.1:8080/mcp"},
    },
}


def test_full_file_is_read_with_camel_case_keys(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, FULL))

    assert cfg.mcp.server.name == "edge"
    assert cfg.mcp.server.version == "9.9.9"
    assert cfg.mcp.server.max_request_bytes == 65536
    pool = cfg.mcp.client.pool
    assert (pool.min, pool.max, pool.idle_timeout, pool.acquire_timeout) == (0, 4, 1000, 2000)
    lb = cfg.mcp.client.load_balancing
    assert lb.algorithm == "round-robin"
    hc = lb.health_check
    assert (hc.interval, hc.timeout, hc.unhealthy_threshold, hc.healthy_threshold) == (1500, 250, 7, 4)
    retry = cfg.mcp.client.retry
    assert (retry.max_attempts, retry.backoff_multiplier, retry.initial_delay, retry.max_delay) == (
        5,
        1.5,
        0,
        100,
    )
    assert list(cfg.servers) == ["git", "remote_1", "plain-http"]


def test_stdio_server_fields(tmp_path: Path) -> None:
    git = load_config_file(write(tmp_path, FULL)).servers["git"]

    assert git.transport == "stdio"
    assert git.command == "uvx"
    assert git.args == ["mcp-server-git", "--repository", "/srv/repo"]
    assert git.env == {"GIT_TRACE": "1", "PATH": "/usr/bin"}
    assert git.cwd == "/srv"
    assert git.url is None
    assert git.headers == {}
    assert git.call_timeout_s == 12.5
    assert git.start_timeout_s == 3.0


@pytest.mark.parametrize(
    ("name", "url", "headers"),
    [
        ("remote_1", "https://mcp.example.invalid/mcp", {"Authorization": "Bearer t0k", "X-Trace": "on"}),
        ("plain-http", "http://127.0.0.1:8080/mcp", {}),
    ],
)
def test_http_server_fields(tmp_path: Path, name: str, url: str, headers: dict[str, str]) -> None:
    spec = load_config_file(write(tmp_path, FULL)).servers[name]

    assert spec.transport == "http"
    assert spec.url == url
    assert spec.headers == headers
    assert spec.command is None
    assert spec.args == []
    assert spec.env == {}
    assert spec.cwd is None


def test_empty_object_gives_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, {}))

    assert cfg.servers == {}
    assert cfg.mcp.server.max_request_bytes == 1_048_576
    assert cfg.mcp.client.load_balancing.algorithm == "shared-queue"
    assert cfg.mcp.client.load_balancing.health_check.unhealthy_threshold == 3
    assert cfg.mcp.client.retry.max_attempts == 3
    assert cfg.mcp.client.pool.max == 1
    assert cfg == ConfigFile()


def test_server_defaults_for_timeouts(tmp_path: Path) -> None:
    spec = load_config_file(write(tmp_path, {"servers": {"t": {"command": "x"}}})).servers["t"]

    assert (spec.call_timeout_s, spec.start_timeout_s) == (60.0, 30.0)
    assert spec.batch_concurrency == 16


def test_a_batch_width_is_bounded_by_what_one_batch_message_carries() -> None:
    from annotated_types import Le

    from tasks.batch import MAX_BATCH
    from tasks.config_file import ServerSpec

    bounds = [m.le for m in ServerSpec.model_fields["batch_concurrency"].metadata if isinstance(m, Le)]
    assert bounds == [MAX_BATCH]


def test_partial_section_keeps_sibling_defaults(tmp_path: Path) -> None:
    raw = {"mcp": {"client": {"loadBalancing": {"healthCheck": {"unhealthyThreshold": 9}}}}}
    hc = load_config_file(write(tmp_path, raw)).mcp.client.load_balancing.health_check

    assert hc.unhealthy_threshold == 9
    assert (hc.interval, hc.timeout, hc.healthy_threshold) == (30_000, 5_000, 2)


@pytest.mark.parametrize("name", ["a", "Z", "0", "git", "my_server-2", "A" * 63, "9lives"])
def test_valid_server_names(tmp_path: Path, name: str) -> None:
    cfg = load_config_file(write(tmp_path, {"servers": {name: {"command": "x"}}}))

    assert list(cfg.servers) == [name]


def test_config_is_frozen(tmp_path: Path) -> None:
    spec = load_config_file(write(tmp_path, FULL)).servers["git"]

    with pytest.raises(ValueError, match="frozen"):
        spec.command = "other"


# --- bad files ---------------------------------------------------------------------------------


BAD_FIELD_CASES: list[tuple[str, Any, str, str]] = [
    # (id, file content, expected field path, expected part of the reason)
    ("typo-in-server", {"servers": {"git": {"comand": "git"}}}, "servers.git.comand", "Extra inputs"),
    ("typo-top-level", {"server": {}}, "server:", "Extra inputs"),
    (
        "typo-in-health-check",
        {"mcp": {"client": {"loadBalancing": {"healthCheck": {"unhealthyTreshold": 2}}}}},
        "mcp.client.loadBalancing.healthCheck.unhealthyTreshold",
        "Extra inputs",
    ),
    (
        "both-transports",
        {"servers": {"git": {"command": "git", "url": "http://h/mcp"}}},
        "servers.git",
        "exactly one",
    ),
    ("no-transport", {"servers": {"git": {"args": ["x"]}}}, "servers.git", "exactly one"),
    ("ftp-url", {"servers": {"web": {"url": "ftp://h/mcp"}}}, "servers.web", "http:// or https://"),
    ("bare-host-url", {"servers": {"web": {"url": "example.com/mcp"}}}, "servers.web", "http:// or https://"),
    (
        "string-for-int",
        {"mcp": {"client": {"retry": {"maxAttempts": "three"}}}},
        "mcp.client.retry.maxAttempts",
        "valid integer",
    ),
    (
        "fraction-for-int",
        {"mcp": {"client": {"retry": {"maxAttempts": 2.5}}}},
        "mcp.client.retry.maxAttempts",
        "fractional part",
    ),
    (
        "below-minimum",
        {"mcp": {"client": {"loadBalancing": {"healthCheck": {"unhealthyThreshold": 0}}}}},
        "mcp.client.loadBalancing.healthCheck.unhealthyThreshold",
        "greater than or equal to 1",
    ),
    (
        "zero-max-request-bytes",
        {"mcp": {"server": {"maxRequestBytes": 0}}},
        "mcp.server.maxRequestBytes",
        "greater than 0",
    ),
    (
        "string-for-float",
        {"servers": {"git": {"command": "git", "callTimeoutS": "slow"}}},
        "servers.git.callTimeoutS",
        "valid number",
    ),
    (
        "zero-timeout",
        {"servers": {"git": {"command": "git", "startTimeoutS": 0}}},
        "servers.git.startTimeoutS",
        "greater than 0",
    ),
    (
        "zero-batch-width",
        {"servers": {"git": {"command": "git", "batchConcurrency": 0}}},
        "servers.git.batchConcurrency",
        "greater than or equal to 1",
    ),
    (
        "batch-width-over-a-batch",
        {"servers": {"git": {"command": "git", "batchConcurrency": 101}}},
        "servers.git.batchConcurrency",
        "less than or equal to 100",
    ),
    ("number-for-command", {"servers": {"git": {"command": 3}}}, "servers.git.command", "valid string"),
    (
        "string-for-args",
        {"servers": {"git": {"command": "git", "args": "a b"}}},
        "servers.git.args",
        "valid list",
    ),
    (
        "number-in-env",
        {"servers": {"git": {"command": "git", "env": {"PORT": 8080}}}},
        "servers.git.env.PORT",
        "valid string",
    ),
    (
        "unknown-algorithm",
        {"mcp": {"client": {"loadBalancing": {"algorithm": "random"}}}},
        "mcp.client.loadBalancing.algorithm",
        "shared-queue",
    ),
    ("servers-null", {"servers": None}, "servers:", "valid dictionary"),
    ("top-level-array", [1, 2], "(top level)", "valid dictionary"),
]


@pytest.mark.parametrize(
    ("content", "field_path", "reason"),
    [pytest.param(c, f, r, id=i) for i, c, f, r in BAD_FIELD_CASES],
)
def test_bad_field_names_file_and_path(tmp_path: Path, content: Any, field_path: str, reason: str) -> None:
    path = write(tmp_path, content)

    with pytest.raises(ConfigError) as info:
        load_config_file(path)

    message = str(info.value)
    assert message.startswith(f"config file {path}: ")
    assert field_path in message
    assert reason in message


def test_every_problem_is_listed(tmp_path: Path) -> None:
    raw = {
        "mcp": {"client": {"retry": {"maxAttempts": 0}}},
        "servers": {"a": {"command": "x", "argz": []}},
    }
    with pytest.raises(ConfigError) as info:
        load_config_file(write(tmp_path, raw))

    message = str(info.value)
    assert "mcp.client.retry.maxAttempts" in message
    assert "servers.a.argz" in message
    assert message.count("; ") >= 1


@pytest.mark.parametrize("name", ["", "-git", "_git", "a b", "a.b", "a/b", "A" * 64, "caf\u00e9", "mcp:git"])
def test_bad_server_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, {"servers": {name: {"command": "x"}}})

    with pytest.raises(ConfigError) as info:
        load_config_file(path)

    message = str(info.value)
    assert str(path) in message
    assert f"server name {name!r}" in message
    assert "names a queue" in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "Expecting property name"),
        ("", "Expecting value"),
        ('{"servers": {}', "Expecting ',' delimiter"),
        ("// comment\n{}", "Expecting value at line 1"),
        ('{\n  "servers": {},\n}', "at line 3"),
    ],
)
def test_not_json(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config_file(path)

    message = str(info.value)
    assert message.startswith(f"config file {path}: not valid JSON: ")
    assert reason in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "agentful.json"

    with pytest.raises(ConfigError) as info:
        load_config_file(path)

    assert str(info.value) == f"config file {path}: cannot read it: No such file or directory"
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path)

    assert str(info.value) == f"config file {tmp_path}: cannot read it: Is a directory"


def test_config_error_is_permanent() -> None:
    assert issubclass(ConfigError, PermanentError)


def test_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"servers": {"caf\xe9": {}}}')  # Latin-1 e-acute at byte 17

    with pytest.raises(ConfigError) as info:
        load_config_file(path)

    assert str(info.value) == f"config file {path}: not UTF-8 text (byte 17)"
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_server_spec_direct_construction_uses_python_names() -> None:
    spec = ServerSpec(command="x", call_timeout_s=2)

    assert spec.call_timeout_s == 2.0
    assert spec.transport == "stdio"
