"""The tool catalog: JSON round trip, the TTL cache, and URLs safe to print."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.catalog import (
    CachedCatalog,
    MemoryCatalogStore,
    ServerTools,
    ToolSpec,
    safe_url,
)
from tasks.redis_urls import is_redis_url

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "description": "IANA name, e.g. 'Europe/Paris'"}},
    "required": ["timezone"],
}


def entry(server: str = "time", *, worker: str = "w1@host", at: float = 1700000000.25) -> ServerTools:
    tools = {
        "get_current_time": ToolSpec("get_current_time", "Current time in a zone", SCHEMA),
        "noop": ToolSpec("noop", "", {}),
    }
    return ServerTools(server, tools, worker, at)


# --- JSON --------------------------------------------------------------------------------------


def test_tool_spec_json_round_trip() -> None:
    spec = ToolSpec("get_current_time", "Current time \u2014 caf\u00e9", SCHEMA)

    assert spec.to_json() == {
        "name": "get_current_time",
        "description": "Current time \u2014 caf\u00e9",
        "input_schema": SCHEMA,
    }
    assert ToolSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "t"}, ToolSpec("t", "", {})),
        ({"name": "t", "description": None, "input_schema": None}, ToolSpec("t", "", {})),
        (
            {"name": 5, "description": "d", "input_schema": {"type": "object"}},
            ToolSpec("5", "d", {"type": "object"}),
        ),
    ],
)
def test_tool_spec_from_sparse_json(raw: dict[str, Any], expected: ToolSpec) -> None:
    assert ToolSpec.from_json(raw) == expected


def test_tool_spec_name_is_required() -> None:
    with pytest.raises(KeyError):
        ToolSpec.from_json({"description": "x"})


def test_server_tools_json_round_trip() -> None:
    original = entry()
    text = original.to_json()

    assert json.loads(text) == {
        "server": "time",
        "worker": "w1@host",
        "published_at_s": 1700000000.25,
        "tools": [
            {"name": "get_current_time", "description": "Current time in a zone", "input_schema": SCHEMA},
            {"name": "noop", "description": "", "input_schema": {}},
        ],
    }
    assert ServerTools.from_json(text) == original
    assert ServerTools.from_json(text.encode()) == original  # Redis hands back bytes


def test_server_tools_from_json_coerces_timestamp() -> None:
    text = json.dumps({"server": "s", "worker": "w", "published_at_s": 12, "tools": []})
    parsed = ServerTools.from_json(text)

    assert parsed == ServerTools("s", {}, "w", 12.0)
    assert isinstance(parsed.published_at_s, float)


tool_specs = st.builds(
    ToolSpec,
    name=st.text(min_size=1, max_size=20),
    description=st.text(max_size=40),
    input_schema=st.dictionaries(
        st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.text(max_size=8), max_size=4
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    server=st.text(min_size=1, max_size=20),
    specs=st.lists(tool_specs, max_size=5, unique_by=lambda t: t.name),
    worker=st.text(max_size=20),
    at=st.floats(allow_nan=False, allow_infinity=False),
)
def test_server_tools_round_trip_property(server: str, specs: list[ToolSpec], worker: str, at: float) -> None:
    original = ServerTools(server, {t.name: t for t in specs}, worker, at)

    assert ServerTools.from_json(original.to_json()) == original


# --- CachedCatalog -----------------------------------------------------------------------------


class CountingStore(MemoryCatalogStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self) -> dict[str, ServerTools]:
        self.loads += 1
        return super().load()


def test_memory_store_publish_and_load() -> None:
    store = MemoryCatalogStore()
    store.publish(entry("time", worker="a"))
    store.publish(entry("git"))
    store.publish(entry("time", worker="b"))  # replaces

    loaded = store.load()
    assert sorted(loaded) == ["git", "time"]
    assert loaded["time"].worker == "b"
    loaded.clear()
    assert len(store.load()) == 2  # a copy was handed out


def test_cache_loads_once_within_ttl_and_again_after() -> None:
    store = CountingStore()
    store.publish(entry("time"))
    cache = CachedCatalog(store, ttl_s=5.0)

    assert list(cache.get(now_s=100.0)) == ["time"]
    assert store.loads == 1

    store.publish(entry("git"))
    for now in (100.0, 102.5, 104.999):
        assert list(cache.get(now_s=now)) == ["time"]  # stale but within ttl
    assert store.loads == 1

    assert sorted(cache.get(now_s=105.0)) == ["git", "time"]  # exactly ttl later: reloaded
    assert store.loads == 2
    cache.get(now_s=109.9)
    assert store.loads == 2
    cache.get(now_s=110.0)
    assert store.loads == 3


def test_refresh_forces_a_load() -> None:
    store = CountingStore()
    cache = CachedCatalog(store, ttl_s=60.0)
    cache.get(now_s=0.0)
    store.publish(entry("git"))

    assert list(cache.get(now_s=1.0, refresh=True)) == ["git"]
    assert store.loads == 2
    # the refresh restarted the ttl from its own time
    cache.get(now_s=60.5)
    assert store.loads == 2
    cache.get(now_s=61.0)
    assert store.loads == 3


def test_zero_ttl_always_loads() -> None:
    store = CountingStore()
    cache = CachedCatalog(store, ttl_s=0.0)
    for _ in range(3):
        cache.get(now_s=7.0)

    assert store.loads == 3


@pytest.mark.parametrize(
    ("max_age_s", "age", "reloads"),
    [
        (0.5, 0.4, False),
        (0.5, 0.5, True),
        (0.5, 3.0, True),
        (100.0, 9.9, False),  # a max age above the ttl does not stretch it
        (100.0, 10.0, True),
        (None, 9.9, False),
        (None, 10.0, True),
    ],
)
def test_max_age(max_age_s: float | None, age: float, reloads: bool) -> None:
    store = CountingStore()
    cache = CachedCatalog(store, ttl_s=10.0)
    cache.get(now_s=50.0)

    cache.get(now_s=50.0 + age, max_age_s=max_age_s)

    assert store.loads == (2 if reloads else 1)


def test_first_get_always_loads_even_at_time_zero() -> None:
    store = CountingStore()
    CachedCatalog(store, ttl_s=1e9).get(now_s=0.0)

    assert store.loads == 1


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
        ("redis://default:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
        ("rediss://user:p%40ss@cache:6380/1", "rediss://***@cache:6380/1"),
        ("amqp://guest:guest@rabbit:5672//", "amqp://***@rabbit:5672//"),
        ("rpc://", "rpc://"),
    ],
)
def test_safe_url(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@settings(max_examples=100, deadline=None)
@given(
    user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=8),
    password=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789%!$", min_size=4, max_size=16),
)
def test_safe_url_never_shows_the_password(user: str, password: str) -> None:
    shown = safe_url(f"redis://{user}:{password}@cache.internal:6379/0")

    assert shown == "redis://***@cache.internal:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:p@ssw0rd@cache:6379/0",  # raw '@' in the password: urllib splits at the last
        "redis://:@@@ssw0rd@cache:6379/0",
        "amqp://us@r:ssw0rd@cache:6379/0",
    ],
)
def test_safe_url_with_at_sign_in_credentials(url: str) -> None:
    shown = safe_url(url)

    assert shown == url.split("://", maxsplit=1)[0] + "://***@cache:6379/0"
    assert "ssw0rd" not in shown


@pytest.mark.parametrize(
    ("url", "redis"),
    [
        ("redis://h/0", True),
        ("rediss://h/0", True),
        ("unix:///run/redis.sock", True),
        ("sentinel://h:26379;sentinel://h2:26379", True),
        ("amqp://h//", False),
        ("rpc://", False),
        ("", False),
    ],
)
def test_is_redis_url(url: str, redis: bool) -> None:
    assert is_redis_url(url) is redis
