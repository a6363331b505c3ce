"""Scripts run many at a time in one round trip (tasks/delivery/pipelined.py), on a real Valkey:
no SCRIPT EXISTS before each pipeline, a lost script cache (a restarted broker) reloads the
script and runs each refused entry exactly once, and the claims and stores built on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.delivery import keys
from tasks.delivery.claims import ClaimStore
from tasks.delivery.pipelined import evalsha_many
from tests.chaos.brokers import RedisProcess

COUNT = "return redis.call('INCR', KEYS[1])"
FAIL_ON_B = "if KEYS[1] == 'b' then return redis.error_reply('ERR refused b') end return 1"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    broker = RedisProcess.valkey(tmp_path / "valkey").start()
    try:
        yield redis.Redis.from_url(broker.url, socket_timeout=5)
    finally:
        broker.stop()


def script_commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_script")}


def test_each_entry_runs_once_in_one_round_trip_and_a_lost_cache_reloads(client: redis.Redis) -> None:
    script = client.register_script(COUNT)
    calls: list[tuple[list[str], list[str]]] = [([f"k{i}"], []) for i in range(5)]
    assert evalsha_many(client, script, calls) == [1] * 5  # the cache is empty: NOSCRIPT, load, once more
    assert evalsha_many(client, script, calls) == [2] * 5
    assert script_commands(client) == {"cmdstat_script|load": 1}  # never SCRIPT EXISTS
    client.script_flush()  # what a restarted broker looks like
    assert evalsha_many(client, script, calls) == [3] * 5  # each ran once, not twice
    assert [int(client.get(f"k{i}") or 0) for i in range(5)] == [3] * 5


def test_wait_reply_comes_last_and_an_entry_error_raises(client: redis.Redis) -> None:
    script = client.register_script(COUNT)
    replies = evalsha_many(client, script, [(["w"], [])], wait=(0, 100))
    assert replies == [1, 0]  # INCR, then WAIT's count of replicas (this Valkey has none)
    client.script_flush()
    assert evalsha_many(client, script, [(["w"], [])], wait=(0, 100)) == [2, 0]
    failing = client.register_script(FAIL_ON_B)
    with pytest.raises(redis.ResponseError, match="refused b"):
        evalsha_many(client, failing, [(["a"], []), (["b"], [])])


def test_take_many_after_the_script_cache_is_lost(client: redis.Redis) -> None:
    store = ClaimStore(client, ttl_s=60)
    client.zadd(keys.INCARNATIONS, {"w@test/1": 1e12})
    first = store.take_many(["t1", "t2", "t3"], "w@test/1", "nonce-1")
    assert [v for v, _, _ in first] == ["own"] * 3
    client.script_flush()
    again = store.take_many(["t1", "t2", "t4"], "w@test/1", "nonce-1")  # the same take, retried
    assert [v for v, _, _ in again] == ["own"] * 3
    token = {c.task_id: c.token for _, c, _ in first if c is not None}
    # t1 and t2 not taken twice: the retried take found them its own
    assert [c.token for _, c, _ in again[:2] if c is not None] == [token["t1"], token["t2"]]
    assert "cmdstat_script|exists" not in script_commands(client)
