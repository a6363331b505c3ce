"""A claim whose reply a broker kill lost is its taker's on the next try.

With `appendfsync always` a broker writes a command's effect to its AOF before it answers: a
broker killed in between comes back with the claim written and the taker never heard so. The
taker retries (tasks/delivery/owner.py `patiently`); without the take's nonce that retry found
the claim held by a live incarnation, its own, and waited for its own result for ever: the call
was never run and never answered (issue 9's chaos tier lost 2 of 240 calls that way).

Here one taker claims calls back to back while the broker is SIGKILLed and restarted on its data,
again and again; every take must end `own`, and the claim stored must be the one it got."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sized
from pathlib import Path

import pytest
import redis

from tasks.delivery import keys
from tasks.delivery.claims import Claim, ClaimStore, Verdict
from tasks.delivery.owner import patiently
from tests.chaos.brokers import RedisProcess
from workers.launcher import wait_for

pytestmark = pytest.mark.chaos
RESTARTS = 8
Taken = tuple[Verdict, Claim | None, str | None]


def taking(got: Sized, more: int = 50) -> None:
    start = len(got)
    wait_for(lambda: len(got) >= start + more, 20)


def test_a_take_whose_reply_was_lost_is_owned_on_the_retry(tmp_path: Path) -> None:
    broker = RedisProcess.valkey(tmp_path / "broker").start()
    client = redis.Redis.from_url(broker.url, socket_timeout=5, socket_connect_timeout=1)
    incarnation = "taker@test/" + uuid.uuid4().hex[:12]
    store = ClaimStore(client, ttl_s=3600)
    stop = threading.Event()
    got: dict[str, tuple[str, str | None]] = {}
    retried: list[str] = []
    errors: list[BaseException] = []

    def take_all() -> None:
        n = 0
        try:
            while not stop.is_set():
                task, nonce, tries = f"t-{n}", uuid.uuid4().hex, [0]

                def once(task: str = task, nonce: str = nonce, tries: list[int] = tries) -> Taken:
                    tries[0] += 1
                    return store.take(task, incarnation, nonce)

                verdict, claim, owner = patiently(once, "claim", wait_s=30)
                got[task] = (verdict, claim.token if claim is not None else owner)
                if tries[0] > 1:
                    retried.append(task)
                n += 1
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    try:
        client.zadd(keys.INCARNATIONS, {incarnation: time.time()})  # a live incarnation
        taker = threading.Thread(target=take_all, daemon=True)
        taker.start()
        for _ in range(RESTARTS):
            taking(got)  # at full speed again
            broker.kill()
            time.sleep(0.2)
            broker.start()
            client.zadd(keys.INCARNATIONS, {incarnation: time.time()})
        taking(got)
        stop.set()
        taker.join(timeout=60)
        assert not errors, errors
        assert len(retried) >= RESTARTS // 2, f"{len(retried)} takes retried: the test proved nothing"
        waited = {t: v for t, v in got.items() if v[0] != "own"}
        assert not waited, f"takes that waited for themselves after a lost reply: {sorted(waited)[:10]}"
        for task in retried:
            assert store.state(task).get("token") == got[task][1], task
    finally:
        stop.set()
        client.close()
        broker.stop()
