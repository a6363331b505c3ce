"""How a call reads in Flower and task events: the tool's name, its arguments, no secrets."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.taskrepr import MAX_REPR_CHARS, MAX_VALUE_CHARS, call_repr, kwargs_repr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"timezone": "UTC"}, "time.get_current_time(timezone='UTC')"),
        (None, "time.get_current_time()"),
        ({}, "time.get_current_time()"),
        ({"password": "hunter2", "user": "bob"}, "time.get_current_time(password='***', user='bob')"),
        ({"api_key": "abc"}, "time.get_current_time(api_key='***')"),
        ({"GITHUB_TOKEN": "abc"}, "time.get_current_time(GITHUB_TOKEN='***')"),
        ({"headers": {"Authorization": "x"}}, "time.get_current_time(headers={'Authorization': '***'})"),
        ({"note": "Bearer abc.def"}, "time.get_current_time(note='***')"),
        ({"q": "sk-abcdefghijklmnopqrst"}, "time.get_current_time(q='***')"),
        ({"q": "eyJhbGciOiJ.eyJzdWIiOiIx.sig"}, "time.get_current_time(q='***')"),
        ({"items": ["a", "ghp_abcdefghijklmnop"]}, "time.get_current_time(items=['a', '***'])"),
        ({"not an identifier": 1}, "time.get_current_time('not an identifier': 1)"),
        ({"keyword": "kept", "monkey": "kept"}, "time.get_current_time(keyword='kept', monkey='kept')"),
        ({"author": "bo", "x-auth": "t"}, "time.get_current_time(author='bo', 'x-auth': '***')"),
        ([1, 2], "time.get_current_time([1, 2])"),
    ],
)
def test_call_repr(arguments: Any, expected: str) -> None:
    assert call_repr("time", "get_current_time", arguments) == expected


def test_long_values_are_cut_and_the_whole_repr_is_bounded() -> None:
    one = call_repr("s", "t", {"text": "x" * 1000})
    assert one.endswith("…)") and len(one) == len("s.t(text=)") + MAX_VALUE_CHARS
    many = call_repr("s", "t", {f"k{i}": "y" * 60 for i in range(50)})
    assert len(many) == MAX_REPR_CHARS and many.endswith("…")


def test_kwargs_repr_shows_only_the_keywords_set() -> None:
    keywords = {"project_id": "p1", "timeout_s": None, "idempotency_key": None}
    assert kwargs_repr(keywords) == "{'project_id': 'p1'}"
    assert kwargs_repr({}) == "{}"
