"""A real gateway (uvicorn, in a thread of the test process) in front of the real `cluster`.

    def test_x(gateway):                       # the default gateway (auth off, JSON responses)
        async with mcp.Client(gateway.url) as c: ...

    def test_y(gateway_factory):               # another one, from a gateway section dict
        gw = gateway_factory({"separator": ".", "jsonResponse": False})
        gw = gateway_factory({"auth": {...}}, extra={"mcp": {...}})   # more top-level keys

Each factory gateway gets its own free port (the section's `port` is overridden) and is stopped
at the end of the session. `gw.config` is the validated ConfigFile, `gw.gateway` the Gateway.

For the OAuth tests (test_auth_token_endpoint.py, test_auth_bearer.py): `auth_gw`, a gateway
with auth on (one per module), its clients' SECRETS, `ring` (its key store), `token_for`, the
stateless-era requests (LIST, `call`, `era`) and `captured_logs`, searched for every secret and
token in SEEN by `assert_no_secret_logged`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tests.conftest import CONFIG, free_port

if TYPE_CHECKING:
    from gateway.auth.keys import KeyRing


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


# -- an auth gateway and its clients (test_auth_token_endpoint.py, test_auth_bearer.py) -----------

SECRETS = {"reader-bot": "reader-" + uuid.uuid4().hex, "ops-bot": "ops/+:" + uuid.uuid4().hex}
ROLES = {"reader": ["tools:call:time/*"], "ops": ["tools:call:*"]}
SEEN: set[str] = set(SECRETS.values())  # every secret and token the auth tests handle


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def captured_logs() -> Iterator[Capture]:
    """Every log line of every logger (ours, the SDK's, uvicorn's, httpx2's) at DEBUG, for the
    whole module (`pytestmark = pytest.mark.usefixtures("captured_logs")`)."""
    handler = Capture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(before)


@pytest.fixture(scope="module")
def auth_gw(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    from gateway.auth.passwords import hash_secret

    clients = {
        "reader-bot": {"secretHash": hash_secret(SECRETS["reader-bot"], log2_n=12), "roles": ["reader"]},
        "ops-bot": {"secretHash": hash_secret(SECRETS["ops-bot"], log2_n=12), "roles": ["ops"]},
    }
    gw = gateway_factory({"auth": {"enabled": True, "tokenTtl": 600, "clients": clients, "roles": ROLES}})
    gw.wait_for_tools("time__get_current_time", "git__git_status")
    return gw


@pytest.fixture(scope="module")
def ring(auth_gw: RunningGateway) -> KeyRing:
    """The gateway's key store, opened as another replica would."""
    from gateway.auth.verifier import build_key_ring

    return build_key_ring(auth_gw.config)


def token_for(gw: RunningGateway, client: str, scope: str | None = None, *, post: bool = False) -> str:
    data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    if post:
        r = httpx2.post(
            f"{gw.base}/token", data=data | {"client_id": client, "client_secret": SECRETS[client]}
        )
    else:
        r = httpx2.post(f"{gw.base}/token", data=data, auth=(client, SECRETS[client]))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = str(r.json()["access_token"])
    SEEN.add(token)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ERA = "2026-07-28"  # stateless: every request carries its own envelope, no session to set up
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": ERA, "io.modelcontextprotocol/clientCapabilities": {}}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": ENVELOPE}}


def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    params = {"name": name, "arguments": args, "_meta": ENVELOPE}
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}


def era(body: dict[str, Any]) -> dict[str, str]:
    headers = {"mcp-protocol-version": ERA, "mcp-method": body["method"]}
    if "name" in body["params"]:
        headers["mcp-name"] = body["params"]["name"]
    return headers


def listed(gw: RunningGateway, token: str) -> list[str]:
    r = rpc(gw.url, LIST, headers=bearer(token) | era(LIST))
    assert r.status_code == 200, r.text
    return [t["name"] for t in r.json()["result"]["tools"]]


def still_serving(gw: RunningGateway, token: str) -> None:
    body = call("time__get_current_time", {"timezone": "UTC"})
    r = rpc(gw.url, body, headers=bearer(token) | era(body))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["isError"] is False


def assert_no_secret_logged(captured: Capture, proof: str) -> None:
    """No secret or token of SEEN in any line `captured` holds; `proof`, a line the module's
    tests must have caused, shows the capture saw them."""
    if len(SEEN) <= len(SECRETS):
        pytest.skip("no token was handled: run the whole module")
    assert len(captured.lines) > 20, "the capture saw nothing: the check would prove nothing"
    assert any(proof in line for line in captured.lines), f"no {proof!r} in the logs"
    leaks = [s[:12] for s in SEEN if s and any(s in line for line in captured.lines)]
    # Pieces too: a token's signature alone is as good as a leak of the token.
    sigs = [s.rsplit(".", 1)[-1] for s in SEEN if s.count(".") == 2 and len(s.rsplit(".", 1)[-1]) > 20]
    leaks += [s[:12] for s in sigs if any(s in line for line in captured.lines)]
    assert not leaks, f"secrets or tokens in the logs: {leaks}"


class MemoryTokens:
    """The MCP SDK client's TokenStorage, in memory; every token it is given goes into SEEN."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        SEEN.update(t for t in (tokens.access_token, tokens.refresh_token) if t)
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.info = client_info
