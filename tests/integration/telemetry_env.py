"""Shared by the telemetry tests: a worker running the meta-echo server with telemetry on, and
local HTTP endpoints standing in for an OTLP collector and for Sentry's ingestion."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import DATA_DIR, META_SERVER, SERVERS


def write_config(name: str) -> Path:
    """The test config plus `meta` (the meta-echo server); no retries, so failures are quick."""
    config = {
        "mcp": {"client": {"retry": {"maxAttempts": 1}}},
        "servers": {**SERVERS, "meta": META_SERVER},
    }
    path = DATA_DIR / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


class Recorder:
    """A real HTTP server that keeps every request it gets: (path, headers, decoded body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with recorder.lock:
                    recorder.requests.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self, path_part: str) -> list[bytes]:
        with self.lock:
            return [b for p, _, b in self.requests if path_part in p]


@contextmanager
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
