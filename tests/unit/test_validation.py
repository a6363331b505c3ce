"""check_call / check_arguments_shape: the checks a call passes before it is queued."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tasks.catalog import ServerTools, ToolSpec
from tasks.errors import (
    InvalidArgumentsError,
    PayloadTooLargeError,
    PermanentError,
    UnknownServerError,
    UnknownToolError,
)
from tasks.validation import check_against_schema, check_arguments_shape, check_call, encoded_size

TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timezone": {"type": "string"},
        "opts": {"type": "object", "properties": {"depth": {"type": "integer"}}},
        "items": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["timezone"],
    "additionalProperties": False,
}

CATALOG = {
    "time": ServerTools(
        "time",
        {
            "get_current_time": ToolSpec("get_current_time", "now", TIME_SCHEMA),
            "convert_time": ToolSpec("convert_time", "", {"type": "object"}),
            "anything": ToolSpec("anything", "", {}),
            "broken": ToolSpec("broken", "", {"type": 12}),
        },
        "w1@host",
        1.0,
    )
}
CONFIGURED = frozenset({"time", "git"})


def call(server: Any, tool: Any, arguments: object, *, max_bytes: int = 1000) -> dict[str, Any]:
    return check_call(server, tool, arguments, catalog=CATALOG, configured=CONFIGURED, max_bytes=max_bytes)


# --- servers and tools -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("catalog", "configured", "offered"),
    [
        (CATALOG, CONFIGURED, "git, time"),
        (CATALOG, frozenset(), "time"),
        ({}, frozenset({"b", "a"}), "a, b"),
        ({}, frozenset(), "no servers yet"),
    ],
)
def test_unknown_server_lists_offered(
    catalog: dict[str, ServerTools], configured: frozenset[str], offered: str
) -> None:
    with pytest.raises(UnknownServerError) as info:
        check_call("tmie", "get_current_time", {}, catalog=catalog, configured=configured, max_bytes=1000)

    assert str(info.value) == f"unknown MCP server 'tmie'; the cluster offers: {offered}"


@pytest.mark.parametrize("server", ["", None, 3, ["time"]])
def test_server_must_be_a_non_empty_string(server: Any) -> None:
    with pytest.raises(UnknownServerError, match="server must be a non-empty string"):
        call(server, "get_current_time", {"timezone": "UTC"})


@pytest.mark.parametrize("tool", ["", None, 7])
def test_tool_must_be_a_non_empty_string(tool: Any) -> None:
    with pytest.raises(UnknownToolError, match="tool must be a non-empty string"):
        call("time", tool, {})


def test_configured_but_unpublished_server_is_accepted_without_tool_check() -> None:
    assert call("git", "any_tool_at_all", {"x": [1, 2]}) == {"x": [1, 2]}
    assert call("git", "git_status", None) == {}


def test_configured_but_unpublished_server_still_checks_shape() -> None:
    with pytest.raises(InvalidArgumentsError):
        call("git", "git_status", ["not", "a", "dict"])
    with pytest.raises(PayloadTooLargeError):
        call("git", "git_status", {"x": "y" * 2000})


def test_unknown_tool_lists_offered() -> None:
    with pytest.raises(UnknownToolError) as info:
        call("time", "get_time", {})

    assert str(info.value) == (
        "MCP server 'time' has no tool 'get_time'; "
        "it offers: anything, broken, convert_time, get_current_time"
    )


def test_valid_call_returns_the_arguments() -> None:
    args = {"timezone": "Europe/Paris", "opts": {"depth": 2}, "items": [1, 2, 3]}

    assert call("time", "get_current_time", args) == args


@pytest.mark.parametrize("tool", ["anything", "broken"])
def test_empty_or_broken_schema_lets_the_server_judge(tool: str) -> None:
    assert call("time", tool, {"whatever": object.__name__}) == {"whatever": "object"}


# --- schema failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        ({"timezone": 3}, "timezone: 3 is not of type 'string'"),
        ({}, "(arguments): 'timezone' is a required property"),
        ({"timezone": "UTC", "opts": {"depth": "deep"}}, "opts.depth: 'deep' is not of type 'integer'"),
        ({"timezone": "UTC", "items": [1, "two"]}, "items.1: 'two' is not of type 'integer'"),
        (
            {"timezone": "UTC", "tz": "x"},
            "(arguments): Additional properties are not allowed ('tz' was unexpected)",
        ),
    ],
)
def test_schema_failure_names_the_field(arguments: dict[str, Any], detail: str) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        call("time", "get_current_time", arguments)

    assert str(info.value) == f"arguments for time/get_current_time fail its input schema: {detail}"


def test_schema_failures_are_all_reported_up_to_five() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(8)}}
    args = {f"p{i}": "x" for i in range(8)}

    with pytest.raises(InvalidArgumentsError) as info:
        check_against_schema("s", "t", schema, args)

    message = str(info.value)
    assert message.count("is not of type 'integer'") == 5
    assert "p0:" in message


# --- argument shape ----------------------------------------------------------------------------


def test_none_arguments_are_an_empty_object() -> None:
    assert check_arguments_shape(None, max_bytes=0) == {}


@pytest.mark.parametrize(
    ("arguments", "type_name"),
    [
        ([1, 2], "list"),
        ("{}", "str"),
        (3, "int"),
        ((("a", 1),), "tuple"),
        ({1: "a"}, "dict"),
        ({"a": 1, ("b",): 2}, "dict"),
    ],
)
def test_not_a_json_object(arguments: object, type_name: str) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        check_arguments_shape(arguments, max_bytes=1000)

    assert str(info.value) == (f"arguments must be a JSON object (a dict with string keys), got {type_name}")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (object(), "Object of type object is not JSON serializable"),
        (b"bytes", "Object of type bytes is not JSON serializable"),
        ({1, 2}, "Object of type set is not JSON serializable"),
    ],
)
def test_not_json_serialisable(value: object, reason: str) -> None:
    with pytest.raises(InvalidArgumentsError) as info:
        check_arguments_shape({"v": value}, max_bytes=1000)

    assert str(info.value) == f"arguments are not JSON-serialisable: {reason}"


def test_circular_arguments_are_not_serialisable() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop

    with pytest.raises(InvalidArgumentsError, match="contain themselves"):
        check_arguments_shape(loop, max_bytes=1000)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, {"deep": math.nan}]])
def test_non_finite_floats_are_not_json(value: object) -> None:
    """NaN and Infinity are not JSON: an MCP server would get an unparseable request."""
    with pytest.raises(InvalidArgumentsError) as info:
        check_arguments_shape({"x": value}, max_bytes=1000)

    assert str(info.value) == (
        "arguments are not JSON-serialisable: Out of range float values are not JSON compliant"
    )


@pytest.mark.parametrize(
    ("arguments", "size"),
    [
        ({}, 2),
        ({"a": 1}, 7),
        ({"a": [1, 2], "b": None}, 20),
        ({"k": "\u00e9"}, 10),  # UTF-8, not \u escapes: two bytes
        ({"k": "\U0001f600"}, 12),
    ],
)
def test_encoded_size_is_compact_utf8(arguments: dict[str, Any], size: int) -> None:
    assert encoded_size(arguments) == size


def test_too_large_names_both_sizes() -> None:
    args = {"blob": "x" * 100}  # {"blob":"xxx..."} = 111 bytes

    with pytest.raises(PayloadTooLargeError) as info:
        check_arguments_shape(args, max_bytes=110)

    assert str(info.value) == "arguments are 111 bytes as JSON; the limit is 110 bytes"
    assert isinstance(info.value, PermanentError)
    assert check_arguments_shape(args, max_bytes=111) is args  # exactly at the limit passes


def test_too_large_through_check_call() -> None:
    with pytest.raises(PayloadTooLargeError, match=r"arguments are \d+ bytes as JSON; the limit is 50 bytes"):
        call("time", "get_current_time", {"timezone": "x" * 100}, max_bytes=50)


# --- properties --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=100, deadline=None)
@given(arguments=json_objects, slack=st.integers(min_value=0, max_value=1000))
def test_json_objects_under_the_limit_always_pass(arguments: dict[str, Any], slack: int) -> None:
    size = len(json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode())

    assert check_arguments_shape(arguments, max_bytes=size + slack) is arguments
    if size > 0:
        with pytest.raises(PayloadTooLargeError):
            check_arguments_shape(arguments, max_bytes=size - 1)


property_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@st.composite
def schema_and_valid_arguments(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    types = draw(st.dictionaries(property_names, st.sampled_from(["string", "integer"]), max_size=6))
    required = sorted(draw(st.sets(st.sampled_from(sorted(types)))) if types else set())
    closed = draw(st.booleans())
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": t} for name, t in types.items()},
        "required": required,
        "additionalProperties": not closed,
    }
    arguments: dict[str, Any] = {}
    for name, t in types.items():
        if name in required or draw(st.booleans()):
            arguments[name] = draw(st.text(max_size=20) if t == "string" else st.integers())
    return schema, arguments


@settings(max_examples=60, deadline=None)
@given(case=schema_and_valid_arguments())
def test_arguments_satisfying_a_simple_schema_pass(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    schema, arguments = case
    catalog = {"s": ServerTools("s", {"t": ToolSpec("t", "", schema)}, "w", 0.0)}

    result = check_call("s", "t", arguments, catalog=catalog, configured=frozenset(), max_bytes=10**9)

    assert result == arguments


@settings(max_examples=60, deadline=None)
@given(case=schema_and_valid_arguments(), data=st.data())
def test_missing_required_property_fails_naming_it(
    case: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject
) -> None:
    schema, arguments = case
    assume(schema["required"])
    missing = data.draw(st.sampled_from(schema["required"]))
    arguments = {k: v for k, v in arguments.items() if k != missing}

    with pytest.raises(InvalidArgumentsError) as info:
        check_against_schema("s", "t", schema, arguments)

    assert f"'{missing}' is a required property" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(case=schema_and_valid_arguments(), data=st.data())
def test_wrong_type_fails_naming_the_property(
    case: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject
) -> None:
    schema, arguments = case
    assume(arguments)
    name = data.draw(st.sampled_from(sorted(arguments)))
    wrong: object = 1 if isinstance(arguments[name], str) else "one"
    arguments = {**arguments, name: wrong}

    with pytest.raises(InvalidArgumentsError) as info:
        check_against_schema("s", "t", schema, arguments)

    assert f"{name}: {wrong!r} is not of type" in str(info.value)
