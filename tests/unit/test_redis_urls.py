"""Sentinel URLs: the nodes and the primary's credentials, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from tasks.catalog import safe_url
from tasks.errors import ConfigError
from tasks.redis_urls import is_sentinel_url, sentinel_parts
from tasks.settings import Settings


def test_sentinel_parts_name_every_node_and_the_primary_credentials_of_the_first() -> None:
    url = "sentinel://user:p%40ss@r1.lab:26379/2;sentinel://r2.lab;sentinel://10.0.0.3:26380/2;"
    nodes, primary = sentinel_parts(url)
    assert nodes == [("r1.lab", 26379), ("r2.lab", 26379), ("10.0.0.3", 26380)]
    assert primary == {"password": "p@ss", "username": "user", "db": 2}
    assert is_sentinel_url(url) and not is_sentinel_url("redis://r1.lab:6379/0")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://r1.lab:26379;redis://r2.lab:6379", "starts with sentinel://"),
        ("sentinel://:26379", "no host"),
        ("sentinel://r1.lab:notaport", "malformed"),
        ("sentinel://r1.lab:26379/zero", "is a number"),
        (";", "names no Sentinel"),
    ],
)
def test_a_bad_sentinel_url_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        sentinel_parts(url)


def test_a_sentinel_url_prints_without_its_password() -> None:
    shown = safe_url("sentinel://:secret@r1.lab:26379/0;sentinel://:secret@r2.lab:26379/0")
    assert "secret" not in shown and shown.count("r") >= 2 and "r2.lab:26379" in shown


def test_publishes_wait_for_a_replica_over_sentinel_only_unless_set() -> None:
    assert Settings().replicas_to_wait("sentinel://r1:26379") == 1
    assert Settings().replicas_to_wait("redis://r1:6379/0") == 0
    assert Settings(wait_replicas=0).replicas_to_wait("sentinel://r1:26379") == 0
    assert Settings(wait_replicas=2).replicas_to_wait("redis://r1:6379/0") == 2
