"""The relay option of a call and the log-level order (tasks/relay.py): pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.errors import InvalidOptionError
from tasks.relay import DEFAULT_WAIT_S, RelayWish, answer_body, check_relay, level_at_least


@pytest.mark.parametrize(
    ("option", "wish"),
    [
        (None, None),
        ({}, None),
        ({"sampling": False, "elicitation": False}, None),
        ({"sampling": True}, RelayWish(sampling=True)),
        ({"elicitation": True, "logLevel": "debug"}, RelayWish(elicitation=True, log_level="debug")),
        ({"logLevel": "error", "waitS": 5}, RelayWish(log_level="error", wait_s=5.0)),
    ],
)
def test_check_relay(option: Any, wish: RelayWish | None) -> None:
    assert check_relay(option) == wish
    if wish is not None:
        assert check_relay(wish.as_option()) == wish  # what travels is read back the same


@pytest.mark.parametrize(
    "option",
    [[], "sampling", {"sampling": 1}, {"logLevel": "INFO"}, {"waitS": -1}, {"waitS": 4000}, {"x": 1}],
)
def test_bad_relay_options(option: Any) -> None:
    with pytest.raises(InvalidOptionError):
        check_relay(option)


def test_levels_follow_rfc_5424_order() -> None:
    assert level_at_least("error", "warning") and level_at_least("info", "info")
    assert not level_at_least("debug", "info") and not level_at_least("notice", "warning")
    assert level_at_least("unheard-of", "emergency")  # unknown levels are shown, not lost


def test_answer_bodies() -> None:
    assert answer_body({"a": 1}) == '{"result":{"a":1}}'
    assert answer_body(code=-1, message="no") == '{"error":{"code":-1,"message":"no"}}'
    assert RelayWish().wait_s == DEFAULT_WAIT_S and not RelayWish().wants()
