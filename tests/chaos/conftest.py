"""The chaos tier: each test builds its own cluster (tests/chaos/harness.py) on a broker
process of its own, and counts outcomes from the ledger the MCP server writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.brokers import BrokerProcess, RedisProcess, make_broker
from tests.conftest import need


def broker_for(kind: str, tmp: Path) -> tuple[BrokerProcess, RedisProcess | None]:
    """make_broker, skipped locally (failed under CI) where this machine lacks it."""
    try:
        return make_broker(kind, tmp)
    except LookupError as exc:
        need(False, str(exc))
        raise


@pytest.fixture
def backends() -> Iterator[list[RedisProcess]]:
    """Result backends the test started beside its broker: stopped at the end."""
    started: list[RedisProcess] = []
    yield started
    for b in started:
        b.stop()
