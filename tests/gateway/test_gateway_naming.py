"""The gateway's naming, pure: exposed names, collisions, the default server, mcptasks status."""

from __future__ import annotations

from gateway.mcptasks import task_status
from gateway.naming import build_index, names_for
from tasks.catalog import ServerTools, ToolSpec


def catalog(**servers: list[str]) -> dict[str, ServerTools]:
    return {
        name: ServerTools(name, {t: ToolSpec(t, "", {"type": "object"}) for t in tools}, "w", 0.0)
        for name, tools in servers.items()
    }


def test_namespaced_names_and_lookup() -> None:
    index = build_index(catalog(time=["now"], git=["git_status", "a__b"]), "__", None)
    assert list(index.tools) == ["git__git_status", "git__a__b", "time__now"]
    route, spec = index.tools["git__a__b"]
    assert (route.server, route.name, spec.name) == ("git", "a__b", "a__b")  # tool names may hold it
    assert index.route("now") is None and index.route("git") is None


def test_a_server_name_ending_like_the_separator_collides_and_both_are_left_out() -> None:
    # "a_" + "__" + "x" == "a" + "__" + "_x": no split can tell them apart.
    index = build_index(catalog(**{"a_": ["x"], "a": ["_x", "y"]}), "__", None)
    assert "a___x" not in index.tools
    assert "a__y" in index.tools
    assert any("ambiguous" in why for why in index.skipped)


def test_server_containing_the_separator_is_left_out() -> None:
    index = build_index(catalog(**{"my__srv": ["t"], "ok": ["t"]}), "__", None)
    assert list(index.tools) == ["ok__t"]
    assert "my__srv" in index.skipped[0]


def test_default_server_is_offered_bare_too_and_namespaced_wins() -> None:
    names, skipped = names_for([("time", "now"), ("time", "git__log"), ("git", "log")], "__", "time")
    assert names["now"].server == "time" and names["time__now"].server == "time"
    assert names["git__log"].server == "git"  # the namespaced name wins over time's bare "git__log"
    assert any("namespaced name wins" in why for why in skipped)


def test_fingerprint_changes_with_the_tools() -> None:
    a = build_index(catalog(time=["now"]), "__", None)
    b = build_index(catalog(time=["now", "later"]), "__", None)
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == build_index(catalog(time=["now"]), "__", None).fingerprint


def test_task_status_table() -> None:
    cases = [
        (None, {}, "working"),
        ({"status": "PENDING"}, {}, "working"),
        ({"status": "STARTED"}, {}, "working"),
        ({"status": "RETRY"}, {}, "working"),
        ({"status": "SUCCESS"}, {}, "completed"),
        ({"status": "FAILURE"}, {}, "failed"),
        ({"status": "REVOKED"}, {}, "cancelled"),
        ({"status": "SUCCESS"}, {"cancelled": "1"}, "cancelled"),
    ]
    for meta, record, expected in cases:
        assert task_status(meta, record) == expected, (meta, record)


def test_which_requests_are_answered_as_sse() -> None:
    from gateway.streaming import wants_stream

    both = "application/json, text/event-stream"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"_meta": {"progressToken": 0}}}
    assert wants_stream(call, both)
    assert wants_stream(call, "text/event-stream;q=0.9, application/json")
    assert not wants_stream(call, "application/json")  # the client cannot read SSE: JSON
    assert not wants_stream({**call, "params": {"_meta": {"progressToken": None}}}, both)
    assert not wants_stream({**call, "params": {}}, both)
    assert not wants_stream({k: v for k, v in call.items() if k != "id"}, both)  # a notification
    assert not wants_stream([call], both)  # a batch
    assert not wants_stream(None, both)  # not JSON
