"""A real gateway (uvicorn, in a thread of the test process) in front of the real `cluster`.

    def test_x(gateway):                       # the default gateway (auth off, JSON responses)
        async with mcp.Client(gateway.url) as c: ...

    def test_y(gateway_factory):               # another one, from a gateway section dict
        gw = gateway_factory({"separator": ".", "jsonResponse": False})
        gw = gateway_factory({"auth": {...}}, extra={"mcp": {...}})   # more top-level keys

Each factory gateway gets its own free port (the section's `port` is overridden) and is stopped
at the end of the session. `gw.config` is the validated ConfigFile, `gw.gateway` the Gateway.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from tests.conftest import CONFIG, free_port


@dataclass
class RunningGateway:
    url: str  # the MCP endpoint, http://127.0.0.1:<port>/mcp
    base: str  # http://127.0.0.1:<port>
    port: int
    config: Any  # tasks.config_file.ConfigFile
    gateway: Any  # gateway.server.Gateway
    server: Any  # uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def wait_for_tools(self, *names: str, timeout_s: float = 60.0) -> None:
        """Until every one of `names` is in the gateway's tool index (workers publish them)."""
        deadline = time.monotonic() + timeout_s
        while not all(n in self.gateway.index.tools for n in names):
            assert time.monotonic() < deadline, (
                f"tools {names} not in the gateway within {timeout_s} s; "
                f"it has {sorted(self.gateway.index.tools)}"
            )
            time.sleep(0.2)


def start_gateway(
    raw_config: dict[str, Any], *, port: int | None = None, scheme: str = "http"
) -> RunningGateway:
    """Validate `raw_config` (a whole config file as a dict), build the app, serve it in a thread."""
    import uvicorn

    from gateway.app import build_app
    from tasks.config_file import ConfigFile

    port = port or free_port()
    raw = json.loads(json.dumps(raw_config))
    raw.setdefault("gateway", {})["port"] = port
    raw["gateway"].setdefault("host", "127.0.0.1")
    config = ConfigFile.model_validate(raw)
    app = build_app(config)
    ssl_kwargs: dict[str, Any] = {}
    if config.gateway.tls.cert_file:
        from gateway.security.tls import uvicorn_ssl

        ssl_kwargs = uvicorn_ssl(config.gateway.tls)
        scheme = "https"
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **ssl_kwargs)
    )
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the gateway's uvicorn exited at start (see the log above)"
        assert time.monotonic() < deadline, "the gateway did not start within 30 s"
        time.sleep(0.05)
    base = f"{scheme}://127.0.0.1:{port}"
    return RunningGateway(f"{base}/mcp", base, port, config, app.state.gateway, server, thread)


@pytest.fixture(scope="session")
def gateway_factory(cluster: list[Any]) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways from a `gateway` section dict (camelCase keys), in front of `cluster`."""
    started: list[RunningGateway] = []

    def factory(
        section: dict[str, Any] | None = None, *, extra: dict[str, Any] | None = None
    ) -> RunningGateway:
        raw = {**CONFIG, **(extra or {}), "gateway": dict(section or {})}
        gw = start_gateway(raw)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        with contextlib.suppress(Exception):
            gw.stop()


@pytest.fixture(scope="session")
def gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """The default gateway (auth off, JSON responses), with time and everything's tools listed."""
    from tests.conftest import HAS_NODE

    gw = gateway_factory({})
    gw.wait_for_tools("time__get_current_time", *(["everything__echo"] if HAS_NODE else []))
    return gw


def rpc(
    url: str, body: Any, *, headers: dict[str, str] | None = None, timeout_s: float = 30.0
) -> httpx2.Response:
    """One raw JSON-RPC POST (body: a dict, or bytes sent as they are)."""
    hdrs = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    hdrs |= headers or {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(url, content=content, headers=hdrs, timeout=timeout_s)
