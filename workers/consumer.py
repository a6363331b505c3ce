"""Celery's consumer, reconnecting to a broker that went away at a steady pace.

Celery's consumer retries a lost broker through kombu's `Connection.ensure_connection` with
kombu's default intervals, 2 s growing by 2 s to 30 s, and passes no way to change them. A
broker that is away 13 s (a RabbitMQ node restarting) is then tried at 2, 6, 12 and 20 s:
every worker comes back up to 7 s after the broker did, with the whole batch waiting. This
consumer (Celery's `worker_consumer` setting) hands Celery's own reconnect loop a connection
whose `ensure_connection` retries after 1 s, then every `RETRY_EVERY_S`; everything else is
Celery's, unchanged.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.connection import Connection

RETRY_FIRST_S = 1.0
RETRY_EVERY_S = 2.0


class SteadyRetries:
    """A view of a kombu `Connection` whose `ensure_connection` retries at a steady pace; any
    other attribute is the connection's own. What it returns is the connection itself."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Connection:
        kwargs.setdefault("interval_start", RETRY_FIRST_S)
        kwargs.setdefault("interval_step", RETRY_EVERY_S - RETRY_FIRST_S)
        kwargs.setdefault("interval_max", RETRY_EVERY_S)
        ensure: Any = self._connection.ensure_connection  # kombu's, untyped
        connected: Connection = ensure(*args, **kwargs)
        return connected

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Connection) -> Connection:
        connected: Connection = super().ensure_connected(SteadyRetries(conn))
        return connected
