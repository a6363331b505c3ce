"""One redis-py client per kombu Redis channel, instead of a new one for every command.

kombu's Redis transport (5.7) builds a fresh `redis.Redis` object in `Channel.conn_or_acquire()`
for each command sent outside the consumer's own client: every publish (`_put`), and on a
worker every message reserved (`QoS.append`) and every ack (`QoS.ack`). The object is only a
facade over the channel's connection pool (the sockets are pooled already), but redis-py fills a
169-entry case-insensitive callback table per instance: about 60 us of CPU each time, that is one
per call in a producer and two per call in a worker (measured with bench/cpu.py and py-spy).

A redis-py client over a ConnectionPool is thread-safe (each command checks a connection out of
the pool and returns it; pipelines are separate objects), so one client per channel serves every
thread that uses the channel just as the fresh ones did. It is rebuilt when the channel's pool
is replaced. `install()` makes kombu's Redis transport (redis://, rediss://) use this channel; it
runs when `tasks` is imported, before any connection exists, in every role.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
        yield shared


def install() -> None:
    """Use the shared-client channel for kombu's plain Redis transport (idempotent)."""
    kombu_redis.Transport.Channel = Channel
