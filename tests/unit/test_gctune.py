"""The garbage collector settings of a worker and the gateway (tasks/gctune.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.errors import ConfigError
from tasks.gctune import DEFAULT, parse
from tasks.settings import Settings, get_settings, reset_caches

PROBE = """
import gc, json, sys
from tasks.gctune import tune
before = gc.get_threshold()
tune(sys.argv[1])
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_parse() -> None:
    assert parse(DEFAULT) == (10000, 50, 100)
    assert parse("700,10,10") == (700, 10, 10)
    assert parse(" OFF ") is None


@pytest.mark.parametrize("value", ["", "1,2", "1,2,3,4", "a,b,c", "-1,2,3", "10000 50 100"])
def test_a_bad_value_is_refused_naming_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFUL_GC_THRESHOLD", value)
    reset_caches()
    try:
        with pytest.raises(ConfigError, match="AGENTFUL_GC_THRESHOLD"):
            get_settings()
    finally:
        monkeypatch.delenv("AGENTFUL_GC_THRESHOLD")
        reset_caches()


def test_the_default_and_an_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFUL_GC_THRESHOLD", raising=False)
    assert Settings().gc_threshold == DEFAULT
    monkeypatch.setenv("AGENTFUL_GC_THRESHOLD", "700,10,10")
    assert Settings().gc_threshold == "700,10,10"


@pytest.mark.parametrize(
    ("spec", "after", "frozen"), [(DEFAULT, [10000, 50, 100], True), ("off", [700, 10, 10], False)]
)
def test_tune_in_a_fresh_process(spec: str, after: list[int], frozen: bool) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, spec], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["before"] == [700, 10, 10] and seen["after"] == after
    assert (seen["frozen"] > 1000) is frozen  # what the process had imported: frozen, never walked again
