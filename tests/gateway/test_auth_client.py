"""Client credentials on the way out: a real `celery worker` reaching a real Streamable HTTP MCP
server protected by gateway/auth (its token endpoint and verifier, its own keys), with the secret
from the environment; the token cached, renewed when it expires, and fetched again after a 401."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp
import pytest
import uvicorn
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from gateway.auth.keys import KeyRing
from gateway.auth.passwords import hash_secret
from gateway.auth.routes import auth_routes
from gateway.auth.verifier import auth_settings, build_key_ring, build_token_verifier
from tasks.config_file import ConfigFile
from tests.conftest import DATA_DIR, free_port
from workers.oauth import ClientCredentialsAuth, OAuthTokenError

SECRET = "w0rker/" + uuid.uuid4().hex


@dataclass
class Protected:
    base: str
    url: str
    ring: KeyRing
    config: ConfigFile


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protected]:
    """A small MCPServer behind our verifier, serving our token endpoint, keys in a directory."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = ConfigFile.model_validate(
        {
            "gateway": {
                "port": port,
                "auth": {
                    "enabled": True,
                    "tokenTtl": 600,
                    "keyStore": str(tmp_path_factory.mktemp("protected-keys")),
                    "roles": {"caller": ["tools:call:protected/*"]},
                    "clients": {
                        "worker-bot": {"secretHash": hash_secret(SECRET, log2_n=12), "roles": ["caller"]}
                    },
                },
            }
        }
    )
    ring = build_key_ring(config)
    server = MCPServer(
        "protected", token_verifier=build_token_verifier(config, ring=ring), auth=auth_settings(config)
    )

    @server.tool()
    def whoami() -> str:
        """Who the bearer token says is calling."""
        token = get_access_token()
        assert token is not None and token.claims is not None
        return json.dumps({"client_id": token.client_id, "jti": token.claims["jti"], "scopes": token.scopes})

    server._custom_starlette_routes.extend(auth_routes(config, ring=ring))  # type: ignore[arg-type]
    app = server.streamable_http_app(json_response=True)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        assert thread.is_alive()
        time.sleep(0.05)
    yield Protected(base, f"{base}/mcp", ring, config)
    uv.should_exit = True
    thread.join(timeout=10)


def test_worker_calls_a_protected_server_with_client_credentials(broker: str, protected: Protected) -> None:
    from tasks import call_tool
    from workers.launcher import WorkerProcess, wait_for

    config = {
        "servers": {
            "protected": {
                "url": protected.url,
                "oauth": {
                    "tokenUrl": f"{protected.base}/token",
                    "clientId": "worker-bot",
                    "clientSecretEnv": "PROTECTED_SECRET",
                    "scope": "tools:call:protected/*",
                },
            }
        },
    }
    path = DATA_DIR / "auth-worker.json"
    path.write_text(json.dumps(config))
    assert SECRET not in path.read_text()
    log = DATA_DIR / "logs" / "authw.log"
    worker = WorkerProcess(
        "authw@%h",
        ["protected"],
        env={"AGENTFUL_CONFIG": str(path), "PROTECTED_SECRET": SECRET},
        log_path=log,
    ).start()
    try:
        results: list[dict[str, Any]] = []

        def answered() -> bool:
            try:
                results.append(call_tool.delay("protected", "whoami", {}).get(timeout=20))
            except Exception:
                return False
            return True

        assert wait_for(answered, 90, interval_s=1.0), f"no answer from the protected server; see {log}"
        second = call_tool.delay("protected", "whoami", {}).get(timeout=20)
        first_who = json.loads(results[-1]["content"][0]["text"])
        second_who = json.loads(second["content"][0]["text"])
        assert first_who["client_id"] == "worker-bot" and first_who["scopes"] == ["tools:call:protected/*"]
        assert first_who["jti"] == second_who["jti"]  # one token, cached, for both calls
    finally:
        worker.stop()
    text = log.read_text(errors="replace")
    assert SECRET not in text and "eyJ" not in text, "a secret or a JWT in the worker's log"


def test_token_is_renewed_when_it_expires_and_after_a_401(protected: Protected) -> None:
    now = [time.time()]
    auth = ClientCredentialsAuth(
        f"{protected.base}/token", "worker-bot", SECRET, method="client_secret_post", clock=lambda: now[0]
    )

    async def whoami(http: httpx2.AsyncClient) -> str:
        async with mcp.Client(streamable_http_client(protected.url, http_client=http)) as c:
            result = await c.call_tool("whoami", {})
            return str(json.loads(result.content[0].text)["jti"])  # type: ignore[union-attr]

    async def main() -> None:
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            first = await whoami(http)
            assert await whoami(http) == first and auth.fetches == 1  # cached
            now[0] += 600 - 29  # within renewBefore (30 s) of its expiry: renewed before use
            renewed = await whoami(http)
            assert renewed != first and auth.fetches == 2
            # The key that signed the cached token is removed: 401, one new token, the call goes on.
            kid = protected.ring.signer()[0].kid
            protected.ring.store.remove(kid)
            protected.ring.invalidate()
            after = await whoami(http)
            assert after != renewed and auth.fetches == 3

    anyio.run(main)
    assert SECRET not in repr(auth)


def test_a_wrong_secret_is_a_clear_error_without_the_secret(protected: Protected) -> None:
    auth = ClientCredentialsAuth(f"{protected.base}/token", "worker-bot", "wrong-" + SECRET)

    async def main() -> None:
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            await http.post(protected.url, json={})

    with pytest.raises(OAuthTokenError, match="invalid_client") as info:
        anyio.run(main)
    assert SECRET not in str(info.value) and "worker-bot" in str(info.value)


def test_secret_env_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.config_file import ServerOAuthSpec
    from workers.oauth import auth_for

    monkeypatch.delenv("NOT_SET_SECRET", raising=False)
    spec = ServerOAuthSpec(
        tokenUrl="http://127.0.0.1:1/token", clientId="c", clientSecretEnv="NOT_SET_SECRET"
    )  # type: ignore[call-arg]
    with pytest.raises(OAuthTokenError, match="NOT_SET_SECRET is not set"):
        auth_for(spec)
