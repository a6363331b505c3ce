"""Resources and prompts of the cluster's servers, through a real worker and real MCP servers.

server-everything offers resources, resource templates and prompts; mcp-server-time offers
neither (no capability), so it answers with empty lists.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import DATA_DIR, HAS_NODE, need

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(broker: str) -> Iterator[str]:
    """One real `celery worker` running server-everything (stdio) and mcp-server-time."""
    need(HAS_NODE, "node and server-everything (npm ci)")
    from tasks import app
    from workers.launcher import WorkerProcess, wait_for

    node = f"rp@{socket.gethostname()}"
    proc = WorkerProcess("rp@%h", ["everything", "time"], log_path=DATA_DIR / "logs" / "rp.log").start()
    try:
        assert wait_for(lambda: bool(app.control.ping(destination=[node], timeout=0.5)), 60), "worker rp down"
        yield node
    finally:
        proc.stop()


def test_resources_are_listed_and_read(worker: str) -> None:
    from tasks import list_resources, read_resource

    listing = list_resources.delay("everything").get(timeout=30)
    assert set(listing) == {"resources", "resource_templates"}
    uris = [r["uri"] for r in listing["resources"]]
    assert "demo://resource/static/document/architecture.md" in uris
    first = listing["resources"][0]
    assert {"uri", "name"} <= set(first) and "mimeType" in first  # wire names, not snake_case
    templates = [t["uriTemplate"] for t in listing["resource_templates"]]
    assert "demo://resource/dynamic/text/{resourceId}" in templates

    read = read_resource.delay("everything", "demo://resource/static/document/architecture.md").get(
        timeout=30
    )
    assert list(read) == ["contents"]
    (content,) = read["contents"]
    assert content["uri"] == "demo://resource/static/document/architecture.md"
    assert content["mimeType"] == "text/markdown"
    assert content["text"].startswith("# Everything Server")

    dynamic = read_resource.delay("everything", "demo://resource/dynamic/text/7").get(timeout=30)
    assert dynamic["contents"][0]["uri"] == "demo://resource/dynamic/text/7"


def test_prompts_are_listed_and_rendered(worker: str) -> None:
    from tasks import get_prompt, list_prompts

    prompts = list_prompts.delay("everything").get(timeout=30)["prompts"]
    by_name = {p["name"]: p for p in prompts}
    assert {"simple-prompt", "args-prompt"} <= set(by_name)
    assert by_name["args-prompt"]["arguments"][0] == {
        "name": "city",
        "description": "Name of the city",
        "required": True,
    }

    simple = get_prompt.delay("everything", "simple-prompt").get(timeout=30)
    assert set(simple) == {"description", "messages"}
    assert simple["messages"][0]["role"] == "user"
    assert simple["messages"][0]["content"]["type"] == "text"

    rendered = get_prompt.delay("everything", "args-prompt", {"city": "Lyon", "state": "Rhone"}).get(
        timeout=30
    )
    text = rendered["messages"][0]["content"]["text"]
    assert "Lyon" in text and "Rhone" in text


def test_a_server_without_resources_or_prompts_answers_empty(worker: str) -> None:
    from tasks import list_prompts, list_resources

    assert list_resources.delay("time").get(timeout=30) == {"resources": [], "resource_templates": []}
    assert list_prompts.delay("time").get(timeout=30) == {"prompts": []}


def test_a_prompt_or_resource_a_server_lacks_is_a_clear_error(worker: str) -> None:
    from tasks import get_prompt, read_resource
    from tasks.errors import InvalidArgumentsError

    # mcp-server-time answers "Internal server error" to an unknown prompt; the worker says why.
    with pytest.raises(InvalidArgumentsError, match="'time' has no prompt 'anything'; it offers: none"):
        get_prompt.delay("time", "anything").get(timeout=30)
    with pytest.raises(InvalidArgumentsError, match="Unknown resource: file:///etc/hostname"):
        read_resource.delay("time", "file:///etc/hostname").get(timeout=30)


def test_unknown_server_is_refused_before_anything_is_queued(worker: str, published: list[str]) -> None:
    from tasks import get_prompt, list_prompts, list_resources, read_resource
    from tasks.errors import UnknownServerError

    for call in (
        lambda: list_resources.delay("nope"),
        lambda: read_resource.delay("nope", "demo://x"),
        lambda: list_prompts.delay("nope"),
        lambda: get_prompt.delay("nope", "simple-prompt"),
    ):
        with pytest.raises(UnknownServerError, match=r"unknown MCP server 'nope'.*everything"):
            call()
    assert published == []


def test_bad_uri_and_bad_prompt_input_are_refused_before_queueing(worker: str, published: list[str]) -> None:
    from tasks import get_prompt, read_resource
    from tasks.errors import InvalidArgumentsError

    with pytest.raises(InvalidArgumentsError, match="URI must be a string with a scheme"):
        read_resource.delay("everything", "no scheme here")
    with pytest.raises(InvalidArgumentsError, match="URI"):
        read_resource.delay("everything", 42)
    with pytest.raises(InvalidArgumentsError, match="prompt name"):
        get_prompt.delay("everything", "")
    with pytest.raises(InvalidArgumentsError, match="object of strings"):
        get_prompt.delay("everything", "args-prompt", {"city": 3})
    with pytest.raises(TypeError, match="takes"):
        read_resource.delay("everything", "demo://x", "extra")
    assert published == []


def test_unknown_prompt_and_resource_are_the_servers_clear_errors(worker: str) -> None:
    from tasks import get_prompt, list_prompts, read_resource
    from tasks.errors import InvalidArgumentsError

    with pytest.raises(
        InvalidArgumentsError, match="'everything' has no prompt 'nope'; it offers: simple-prompt"
    ):
        get_prompt.delay("everything", "nope").get(timeout=30)
    with pytest.raises(InvalidArgumentsError, match=r"demo://resource/none.*-32602.*not found") as missing:
        read_resource.delay("everything", "demo://resource/none").get(timeout=30)
    assert missing.value.args[1] == -32602  # the server's JSON-RPC code travels with the error
    with pytest.raises(InvalidArgumentsError, match="city"):  # a required argument is missing
        get_prompt.delay("everything", "args-prompt", {}).get(timeout=30)
    # The session still serves.
    assert list_prompts.delay("everything").get(timeout=30)["prompts"]
