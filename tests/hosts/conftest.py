"""Hosts as network namespaces (tests/hosts/lab.py): root and `ip netns` are needed; missing, the
tier skips locally with the reason and fails under CI."""

from __future__ import annotations

import pytest

from tests.conftest import need
from tests.hosts.lab import available


@pytest.fixture(autouse=True)
def _hosts_possible() -> None:
    why = available()
    need(why is None, f"hosts as network namespaces: {why}")
