"""workers/consumer.py: the worker's consumer retries a lost broker after 1 s, then every 2 s."""

from __future__ import annotations

import socket

import pytest
from kombu.connection import Connection

import celeryconfig
from workers.consumer import RETRY_EVERY_S, RETRY_FIRST_S, SteadyRetries


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_broker_is_tried_again_after_1_s_then_every_2_s() -> None:
    """A real kombu connection to a port nobody listens on: the intervals Celery's reconnect loop
    is told (its errback's second argument) stay at 2 s instead of growing by 2 s each time."""
    waits: list[float] = []
    conn = Connection(f"redis://127.0.0.1:{_closed_port()}/0", connect_timeout=1)
    try:
        with pytest.raises(Exception, match=r"refused|Error 111"):
            SteadyRetries(conn).ensure_connection(lambda exc, interval: waits.append(interval), 3)
    finally:
        conn.release()
    assert waits == [RETRY_FIRST_S, RETRY_EVERY_S, RETRY_EVERY_S]


def test_the_view_is_the_connection_in_all_else() -> None:
    conn = Connection("memory://")
    try:
        view = SteadyRetries(conn)
        assert view.as_uri() == conn.as_uri() and view.transport_options is conn.transport_options
        assert view.ensure_connection(max_retries=1) is conn
    finally:
        conn.release()


def test_the_worker_uses_it() -> None:
    assert celeryconfig.worker_consumer == "workers.consumer:Consumer"
    assert celeryconfig.worker_enable_prefetch_count_reduction is False
