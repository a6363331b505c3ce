"""gateway.auth and servers.*.oauth in the config file: errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from beat.schedule import beat_schedule
from gateway.auth.passwords import hash_secret
from tasks.config_file import ConfigFile, load_config_file
from tasks.errors import ConfigError

HASH = hash_secret("s", log2_n=10)


def load(tmp_path: Path, raw: dict[str, Any]) -> ConfigFile:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    return load_config_file(path)


def auth(**section: Any) -> dict[str, Any]:
    return {"gateway": {"auth": {"enabled": True, **section}}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            auth(roles={"r": ["tools:call:git"]}),
            "gateway.auth.roles: Value error, roles.r: 'tools:call:git' is not a scope",
        ),
        (auth(clients={"c": {"secretHash": "hunter2"}}), "gateway.auth.clients.c.secretHash"),
        (
            auth(clients={"c": {"secretHash": HASH, "roles": ["admin"]}}),
            "clients.c.roles: unknown role 'admin'",
        ),
        (
            auth(clients={"c": {"secretHash": HASH, "secret": "x"}}),
            "gateway.auth.clients.c.secret: Extra inputs",
        ),
        (auth(users={"alice": {"passwordHash": "hunter2"}}), "gateway.auth.users.alice.passwordHash"),
        (
            auth(users={"alice": {"passwordHash": HASH, "roles": ["admin"]}}),
            "users.alice.roles: unknown role 'admin'",
        ),
        (auth(users={"a b": {"passwordHash": HASH}}), "users: 'a b' cannot name a user"),
        (
            auth(
                external={"issuer": "https://idp", "audience": "a", "jwksUrl": "https://x"},
                users={"alice": {"passwordHash": HASH}},
            ),
            "users: the login page belongs to the built-in issuer",
        ),
        (auth(registration={"perSourcePerHour": 0}), "gateway.auth.registration.perSourcePerHour"),
        (auth(registration={"maxBytes": 10}), "gateway.auth.registration.maxBytes"),
        (auth(refreshTokenDays=0), "gateway.auth.refreshTokenDays"),
        (auth(algorithm="HS256"), "gateway.auth.algorithm"),
        (auth(tokenTtl=0), "gateway.auth.tokenTtl"),
        (auth(rotationDays=0), "gateway.auth.rotationDays"),
        (auth(issuer="gateway.example"), "issuer: must start with http"),
        (
            auth(external={"issuer": "https://idp", "audience": "a", "jwksUrl": "ftp://x"}),
            "gateway.auth.external.jwksUrl",
        ),
        (
            auth(
                external={
                    "issuer": "https://idp",
                    "audience": "a",
                    "jwksUrl": "https://idp/certs",
                    "algorithms": ["none"],
                }
            ),
            "gateway.auth.external.algorithms.0",
        ),
        (
            auth(
                external={"issuer": "https://idp", "audience": "a", "jwksUrl": "https://x"},
                clients={"c": {"secretHash": HASH}},
            ),
            "cannot be used with an external issuer",
        ),
        (
            {
                "servers": {
                    "s": {
                        "command": "x",
                        "oauth": {"tokenUrl": "http://t", "clientId": "c", "clientSecretEnv": "E"},
                    }
                }
            },
            "oauth: only for a Streamable HTTP server",
        ),
        (
            {
                "servers": {
                    "s": {
                        "url": "http://s/mcp",
                        "oauth": {"tokenUrl": "http://t", "clientId": "c", "clientSecret": "plain"},
                    }
                }
            },
            "servers.s.oauth.clientSecret: Extra inputs",
        ),
        (
            {
                "servers": {
                    "s": {
                        "url": "http://s/mcp",
                        "oauth": {"tokenUrl": "http://t", "clientId": "c", "clientSecretEnv": "not a var"},
                    }
                }
            },
            "servers.s.oauth.clientSecretEnv",
        ),
        (
            {
                "schedules": {"rotate-signing-keys": {"server": "s", "tool": "t", "every": 1}},
                "servers": {"s": {"command": "x"}},
            },
            "cannot name a schedule",
        ),
    ],
)
def test_bad_auth_config_names_the_field(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw)
    assert message in str(info.value), str(info.value)


def test_a_good_auth_config(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        auth(
            roles={"reader": ["tools:call:time/*"], "ops": ["tools:call:*"]},
            clients={"ci": {"secretHash": HASH, "roles": ["reader"]}},
            algorithm="RS256",
            rotationDays=7,
        ),
    )
    assert config.gateway.auth.clients["ci"].roles == ["reader"]
    entry = beat_schedule(config)["rotate-signing-keys"]
    assert entry["task"] == "agentful.rotate_signing_keys" and entry["schedule"] == 86_400.0
    assert "rotate-signing-keys" not in beat_schedule(ConfigFile())  # auth off: no job
    external = auth(external={"issuer": "https://idp", "audience": "a", "jwksUrl": "https://idp/certs"})
    assert "rotate-signing-keys" not in beat_schedule(load(tmp_path, external))  # no keys of ours
