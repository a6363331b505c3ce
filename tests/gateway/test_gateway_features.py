"""The gateway's features end to end: stdio, list_changed, MCP Tasks, progress, cancellation,
project affinity, naming options, resources and prompts. Real workers, real MCP servers."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import anyio
import mcp
import mcp_types as types
import pytest
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.conftest import CONFIG, DATA_DIR, HAS_NODE, ROOT, SERVERS, need
from tests.gateway.conftest import RunningGateway, rpc
from tests.gateway.test_gateway import call_raw, legacy_session, still_serves

AGENTFUL = ROOT / ".venv" / "bin" / "agentful"


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


# -- stdio -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_stdio_gateway_subprocess(cluster: list[Any], mode: str) -> None:
    """`agentful gateway --stdio` as an MCP client's subprocess."""
    params = StdioServerParameters(command=str(AGENTFUL), args=["gateway", "--stdio"], env=dict(os.environ))

    async def go() -> tuple[list[str], types.CallToolResult, str]:
        async with mcp.Client(params, mode=mode, read_timeout_seconds=60) as c:
            names: list[str] = []
            for _ in range(300):  # the catalog may still be filling
                names = [t.name for t in (await c.list_tools()).tools]
                if "time__get_current_time" in names:
                    break
                await anyio.sleep(0.2)
            result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            return names, result, c.protocol_version

    names, result, version = anyio.run(go)
    assert "time__get_current_time" in names
    assert not result.is_error
    first = result.content[0]
    assert isinstance(first, types.TextContent)
    assert json.loads(first.text)["timezone"] == "UTC"
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")


# -- list_changed ----------------------------------------------------------------------------


def test_list_changed_when_a_server_appears(gateway_factory: Callable[..., RunningGateway]) -> None:
    """A worker with a new server starts: 2025-11-25 clients get notifications/tools/list_changed
    on their standalone stream, 2026-07-28 clients on subscriptions/listen."""
    from tasks.api import catalog_store
    from tasks.catalog import CATALOG_KEY
    from workers.launcher import WorkerProcess

    gw = gateway_factory({"refreshS": 0.3})
    gw.wait_for_tools("time__get_current_time")
    extra = {**CONFIG, "servers": {**SERVERS, "time2": SERVERS["time"]}}
    path = DATA_DIR / "config-time2.json"
    path.write_text(json.dumps(extra))
    legacy_seen: list[str] = []

    async def on_message(message: Any) -> None:
        method = getattr(message, "method", None)
        if method:
            legacy_seen.append(method)

    async def go() -> tuple[list[str], bool]:
        async with (
            mcp.Client(gw.url, mode="legacy", message_handler=on_message) as old,
            mcp.Client(gw.url, mode="2026-07-28") as new,
            new.listen(tools_list_changed=True) as sub,
        ):
            assert "time2__get_current_time" not in [t.name for t in (await old.list_tools()).tools]
            worker = WorkerProcess(
                f"t3@{socket.gethostname()}", ["time2"], env={"AGENTFUL_CONFIG": str(path)}
            )
            await anyio.to_thread.run_sync(worker.start)
            try:
                modern_seen = False
                with anyio.fail_after(90):
                    async for event in sub:
                        if (
                            isinstance(event, types.ToolListChangedNotification)
                            or "Tools" in type(event).__name__
                        ):
                            modern_seen = True
                            break
                    while "notifications/tools/list_changed" not in legacy_seen:
                        await anyio.sleep(0.1)
                names = [t.name for t in (await old.list_tools()).tools]
                result = await new.call_tool("time2__get_current_time", {"timezone": "UTC"})
                assert not result.is_error
                return names, modern_seen
            finally:
                await anyio.to_thread.run_sync(worker.stop)
                store = catalog_store()
                assert store is not None
                store._client.hdel(CATALOG_KEY, "time2")

    names, modern_seen = anyio.run(go)
    assert "time2__get_current_time" in names
    assert modern_seen
    assert "notifications/tools/list_changed" in legacy_seen


# -- MCP Tasks (2025-11-25) ------------------------------------------------------------------


def _rpc_result(url: str, headers: dict[str, str], method: str, params: dict[str, Any]) -> dict[str, Any]:
    r = rpc(
        url, {"jsonrpc": "2.0", "id": 11, "method": method, "params": params}, headers=headers, timeout_s=120
    )
    body: dict[str, Any] = r.json()
    return body


def test_task_survives_a_disconnect_and_another_gateway(
    gateway: RunningGateway, gateway_factory: Callable[..., RunningGateway]
) -> None:
    need(HAS_NODE, "server-everything needs Node")
    first = legacy_session(gateway.url)
    started = _rpc_result(
        gateway.url,
        first,
        "tools/call",
        {
            "name": "everything__trigger-long-running-operation",
            "arguments": {"duration": 2, "steps": 2},
            "task": {"ttl": 600_000},
        },
    )
    task = started["result"]["task"]
    assert task["status"] == "working"
    assert task["ttl"] == 600_000
    task_id = task["taskId"]
    # The client goes away: its session ends.
    import httpx2

    assert httpx2.delete(gateway.url, headers=first, timeout=10).status_code in (200, 204)
    # A new connection, to ANOTHER gateway process: the state is not in gateway memory.
    other = gateway_factory({})
    second = legacy_session(other.url)
    got = _rpc_result(other.url, second, "tasks/get", {"taskId": task_id})["result"]
    assert got["taskId"] == task_id and got["status"] in ("working", "completed")
    payload = _rpc_result(other.url, second, "tasks/result", {"taskId": task_id})["result"]
    assert payload["isError"] is False, payload
    assert "Long running operation completed" in payload["content"][0]["text"]
    assert payload["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
    done = _rpc_result(other.url, second, "tasks/get", {"taskId": task_id})["result"]
    assert done["status"] == "completed"
    listed = _rpc_result(other.url, second, "tasks/list", {})["result"]["tasks"]
    assert task_id in [t["taskId"] for t in listed]


def test_task_cancel(gateway: RunningGateway) -> None:
    need(HAS_NODE, "server-everything needs Node")
    headers = legacy_session(gateway.url)
    started = _rpc_result(
        gateway.url,
        headers,
        "tools/call",
        {
            "name": "everything__trigger-long-running-operation",
            "arguments": {"duration": 60, "steps": 60},
            "task": {},
        },
    )
    task_id = started["result"]["task"]["taskId"]
    cancelled = _rpc_result(gateway.url, headers, "tasks/cancel", {"taskId": task_id})["result"]
    assert cancelled["status"] == "cancelled"
    assert (
        _rpc_result(gateway.url, headers, "tasks/get", {"taskId": task_id})["result"]["status"] == "cancelled"
    )
    again = _rpc_result(gateway.url, headers, "tasks/cancel", {"taskId": task_id})
    assert again["error"]["code"] == -32602 and "already cancelled" in again["error"]["message"]
    result = _rpc_result(gateway.url, headers, "tasks/result", {"taskId": task_id})
    assert result["error"]["code"] == -32602 and "cancelled" in result["error"]["message"]
    from celery.result import AsyncResult

    wait_until(lambda: AsyncResult(task_id).state == "REVOKED", 60, "the worker revoking the task")


def test_task_with_bad_input(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    unknown = _rpc_result(gateway.url, headers, "tasks/get", {"taskId": "no-such-task"})
    assert unknown["error"]["code"] == -32602
    missing = _rpc_result(gateway.url, headers, "tasks/get", {})
    assert missing["error"]["code"] == -32602
    bad_tool = _rpc_result(gateway.url, headers, "tools/call", {"name": "nope", "arguments": {}, "task": {}})
    assert bad_tool["error"]["code"] == -32602
    bad_args = _rpc_result(
        gateway.url, headers, "tools/call", {"name": "time__get_current_time", "arguments": {}, "task": {}}
    )
    assert bad_args["result"]["isError"] is True
    bad_cursor = _rpc_result(gateway.url, headers, "tasks/list", {"cursor": "minus-one"})
    assert bad_cursor["error"]["code"] == -32602
    still_serves(gateway)


# -- progress and cancellation ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_progress_reaches_the_client(gateway_factory: Callable[..., RunningGateway], mode: str) -> None:
    """Progress rides the request's SSE stream: a gateway with jsonResponse false."""
    need(HAS_NODE, "server-everything needs Node")
    gw = gateway_factory({"jsonResponse": False})
    gw.wait_for_tools("everything__trigger-long-running-operation")
    events: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    async def go() -> types.CallToolResult:
        async with mcp.Client(gw.url, mode=mode, read_timeout_seconds=60) as c:
            return await c.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 1, "steps": 4},
                progress_callback=on_progress,
            )

    result = anyio.run(go)
    assert not result.is_error, result
    assert [e[0] for e in events] == [1, 2, 3, 4], events
    assert all(e[1] == 4 for e in events)


def test_client_cancel_revokes_the_task(gateway_factory: Callable[..., RunningGateway]) -> None:
    need(HAS_NODE, "server-everything needs Node")
    gw = gateway_factory({"jsonResponse": False})
    gw.wait_for_tools("everything__trigger-long-running-operation")
    seen: list[str] = []

    async def go() -> None:
        async with mcp.Client(gw.url, mode="legacy", read_timeout_seconds=120) as c:
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        await c.call_tool(
                            "everything__trigger-long-running-operation", {"duration": 60, "steps": 60}
                        )

                    tg.start_soon(call)
                    while not gw.gateway.waiter._pending:  # the gateway has queued it
                        await anyio.sleep(0.05)
                    seen.extend(gw.gateway.waiter._pending)
                    await anyio.sleep(1.0)  # running on the worker
                    tg.cancel_scope.cancel()  # the client cancels: notifications/cancelled
            assert not scope.cancelled_caught
            await anyio.sleep(0.5)

    anyio.run(go)
    assert len(seen) == 1
    from celery.result import AsyncResult

    wait_until(lambda: AsyncResult(seen[0]).state == "REVOKED", 60, "the cancelled call ending REVOKED")
    still_serves(gw)


# -- project affinity ------------------------------------------------------------------------


def _project_of(gw: RunningGateway, headers: dict[str, str], meta: dict[str, Any] | None) -> Any:
    from celery.result import AsyncResult

    params: dict[str, Any] = {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}
    if meta is not None:
        params["_meta"] = meta
    r = rpc(gw.url, {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}, headers=headers)
    task_id = r.json()["result"]["_meta"]["agentful/task_id"]
    return AsyncResult(task_id).kwargs.get("project_id")


def test_project_header_then_meta(gateway: RunningGateway) -> None:
    """Precedence: X-Agentful-Project header, else the token's client (auth on), else _meta."""
    headers = legacy_session(gateway.url)
    assert _project_of(gateway, {**headers, "X-Agentful-Project": "from-header"}, None) == "from-header"
    both = _project_of(gateway, {**headers, "X-Agentful-Project": "from-header"}, {"agentful/project": "m"})
    assert both == "from-header"
    assert _project_of(gateway, headers, {"agentful/project": "from-meta"}) == "from-meta"
    assert _project_of(gateway, headers, None) is None


# -- naming options --------------------------------------------------------------------------


def test_separator_and_default_server(gateway_factory: Callable[..., RunningGateway]) -> None:
    gw = gateway_factory({"separator": ".", "defaultServer": "time"})
    gw.wait_for_tools("time.get_current_time", "get_current_time", "git.git_status")
    headers = legacy_session(gw.url)
    listed = rpc(gw.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers).json()
    names = [t["name"] for t in listed["result"]["tools"]]
    assert "get_current_time" in names and "time.get_current_time" in names
    assert "git_status" not in names  # only the default server's tools are bare
    assert listed["result"]["tools"][0]["execution"] == {"taskSupport": "optional"}
    for name in ("get_current_time", "time.get_current_time"):
        body = call_raw(gw, headers, name, {"timezone": "UTC"})
        assert body["result"]["isError"] is False, body
    assert call_raw(gw, headers, "time__get_current_time", {"timezone": "UTC"})["error"]["code"] == -32602


def test_separator_in_a_server_name_is_a_config_error() -> None:
    from tasks.config_file import ConfigFile

    with pytest.raises(ValueError, match=r"contains gateway\.separator"):
        ConfigFile.model_validate({"servers": {"my__srv": {"command": "x"}}})
    with pytest.raises(ValueError, match="separator"):
        ConfigFile.model_validate({"gateway": {"separator": "a b"}})


# -- resources and prompts -------------------------------------------------------------------


def test_resources_and_prompts_of_everything(gateway: RunningGateway) -> None:
    """everything and everything-http are the same program: each URI is offered twice."""
    need(HAS_NODE, "server-everything needs Node")

    async def go() -> tuple[Any, Any, Any, Any, Any]:
        async with mcp.Client(gateway.url, mode="legacy", read_timeout_seconds=60) as c:
            resources = await c.list_resources()
            templates = await c.list_resource_templates()
            uri = next(str(r.uri) for r in resources.resources if str(r.uri).startswith("demo://"))
            try:
                await c.read_resource(uri)
                ambiguous = None
            except MCPError as exc:
                ambiguous = exc
            read = await c.read_resource(uri, meta=cast("Any", {"agentful/server": "everything"}))
            prompts = await c.list_prompts()
            simple = next(p.name for p in prompts.prompts if p.name == "everything__simple-prompt")
            got = await c.get_prompt(simple, {})
            return resources, templates, ambiguous, (read, prompts), got

    resources, templates, ambiguous, (read, prompts), got = anyio.run(go)
    assert resources.resources and templates.resource_templates
    assert ambiguous is not None and ambiguous.code == -32602
    assert "everything and everything-http" in ambiguous.message
    assert read.contents
    names = [p.name for p in prompts.prompts]
    assert "everything__simple-prompt" in names and "everything-http__simple-prompt" in names
    assert got.messages


def test_prompt_and_resource_bad_input(gateway: RunningGateway) -> None:
    headers = legacy_session(gateway.url)
    unknown = _rpc_result(gateway.url, headers, "prompts/get", {"name": "no__such-prompt"})
    assert unknown["error"]["code"] == -32602 and "Unknown prompt" in unknown["error"]["message"]
    if HAS_NODE:
        no_city = _rpc_result(gateway.url, headers, "prompts/get", {"name": "everything__args-prompt"})
        assert no_city["error"]["code"] == -32602, no_city
    missing = _rpc_result(gateway.url, headers, "resources/read", {"uri": "nothere://x"})
    assert missing["error"]["code"] == -32602 and "Unknown resource" in missing["error"]["message"]
    still_serves(gateway)


# -- with auth on: each client sees its own tasks; the token's client is the project ----------


def test_tasks_and_project_per_client_with_auth(gateway_factory: Callable[..., RunningGateway]) -> None:
    import uuid

    import httpx2
    from celery.result import AsyncResult

    from gateway.auth.passwords import hash_secret

    secrets = {name: uuid.uuid4().hex for name in ("alice", "bob")}
    clients = {n: {"secretHash": hash_secret(s, log2_n=12), "roles": ["all"]} for n, s in secrets.items()}
    gw = gateway_factory({"auth": {"enabled": True, "clients": clients, "roles": {"all": ["tools:call:*"]}}})
    gw.wait_for_tools("time__get_current_time")

    def session(name: str) -> dict[str, str]:
        r = httpx2.post(
            f"{gw.base}/token",
            data={"grant_type": "client_credentials"},
            auth=(name, secrets[name]),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return legacy_session(gw.url, {"authorization": f"Bearer {r.json()['access_token']}"})

    alice, bob = session("alice"), session("bob")
    call = {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}
    task_id = _rpc_result(gw.url, alice, "tools/call", {**call, "task": {}})["result"]["task"]["taskId"]
    assert _rpc_result(gw.url, alice, "tasks/result", {"taskId": task_id})["result"]["isError"] is False
    assert task_id in [t["taskId"] for t in _rpc_result(gw.url, alice, "tasks/list", {})["result"]["tasks"]]
    assert task_id not in [t["taskId"] for t in _rpc_result(gw.url, bob, "tasks/list", {})["result"]["tasks"]]
    assert _rpc_result(gw.url, bob, "tasks/get", {"taskId": task_id})["error"]["code"] == -32602
    assert _rpc_result(gw.url, bob, "tasks/result", {"taskId": task_id})["error"]["code"] == -32602
    # The project for affinity: the token's client, unless the header names one.
    plain = _rpc_result(gw.url, alice, "tools/call", call)["result"]["_meta"]["agentful/task_id"]
    assert AsyncResult(plain).kwargs["project_id"] == "alice"
    named = rpc(
        gw.url,
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": call},
        headers={**alice, "X-Agentful-Project": "p9"},
    ).json()["result"]["_meta"]["agentful/task_id"]
    assert AsyncResult(named).kwargs["project_id"] == "p9"


def test_client_trace_id_reaches_the_audit_line(gateway_factory: Callable[..., RunningGateway]) -> None:
    import uuid

    audit = DATA_DIR / f"audit-{uuid.uuid4().hex}.jsonl"
    gw = gateway_factory({"audit": {"path": str(audit)}})
    gw.wait_for_tools("time__get_current_time")
    trace = uuid.uuid4().hex
    headers = legacy_session(gw.url)
    params = {
        "name": "time__get_current_time",
        "arguments": {"timezone": "UTC"},
        "_meta": {"traceparent": f"00-{trace}-{'1' * 16}-01"},
    }
    assert _rpc_result(gw.url, headers, "tools/call", params)["result"]["isError"] is False
    wait_until(lambda: audit.exists() and trace in audit.read_text(), 10, "the audit line")
    line = next(json.loads(x) for x in audit.read_text().splitlines() if trace in x)
    assert (line["server"], line["tool"], line["outcome"], line["trace_id"]) == (
        "time",
        "get_current_time",
        "ok",
        trace,
    )


def test_cli_serves_http_and_refuses_a_bad_config(cluster: list[Any]) -> None:
    import subprocess

    import httpx2

    from tests.conftest import free_port, port_open

    bad = DATA_DIR / "bad-gateway.json"
    bad.write_text(json.dumps({**CONFIG, "gateway": {"separator": "a b"}}))
    done = subprocess.run(
        [str(AGENTFUL), "gateway", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "gateway.separator" in done.stderr
    port = free_port()
    proc = subprocess.Popen(
        [str(AGENTFUL), "gateway", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, "agentful gateway listening")

        def ready() -> bool:
            body = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            return "time" in body["servers"]

        wait_until(ready, 60, "the gateway listing time")
        result = anyio.run(_call_time, f"http://127.0.0.1:{port}/mcp")
        assert not result.is_error
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) is not None


async def _call_time(url: str) -> types.CallToolResult:
    async with mcp.Client(url) as c:
        return await c.call_tool("time__get_current_time", {"timezone": "UTC"})
