"""What a Redis URL is, and the parts of a Sentinel one: pure functions (no client, no settings).

A broker that must survive the loss of its host runs as a primary and replicas under Redis
Sentinel (docs/deployment.md "No single broker host"). kombu and Celery name such a broker
`sentinel://host:26379;sentinel://host2:26379;...` (kombu's own format: one `sentinel://` per
Sentinel node, `;` between them); the password and database of the primary go in the first
one: `sentinel://:password@host:26379/0;sentinel://host2:26379`.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote, urlsplit

from tasks.errors import ConfigError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")

# TCP keepalive on every connection to Redis: a connection to a host that died or was cut off
# (no RST ever comes) fails in about 11 s instead of hanging until the kernel gives up (minutes):
# an idle BRPOP or a pooled connection is probed after 5 s idle, every 2 s, 3 times; data sent
# and not acknowledged for 10 s fails the connection too (TCP_USER_TIMEOUT, in ms). Then redis-py
# and kombu reconnect, over Sentinel to the promoted primary. The probes are answered by the
# peer's kernel, so a busy or paused Redis is not taken for dead.
KEEPALIVE_OPTIONS: dict[int, int] = {
    socket.TCP_KEEPIDLE: 5,
    socket.TCP_KEEPINTVL: 2,
    socket.TCP_KEEPCNT: 3,
    socket.TCP_USER_TIMEOUT: 10_000,
}


def is_redis_url(url: str) -> bool:
    """A Redis or Valkey broker or backend: one server, or a primary found through Sentinel."""
    return url.startswith(REDIS_SCHEMES)


def is_sentinel_url(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, object]]:
    """The Sentinel nodes of a sentinel:// URL and the primary's connection keywords
    (password, username, db) from its first part. A malformed part is a ConfigError."""
    nodes: list[tuple[str, int]] = []
    primary: dict[str, object] = {}
    for index, part in enumerate(p.strip() for p in url.split(";")):
        if not part:
            continue
        if not part.startswith("sentinel://"):
            raise ConfigError(
                f"every part of a Sentinel URL starts with sentinel://, not {part.split('://')[0]!r}"
            )
        try:
            split = urlsplit(part)
            host, port = split.hostname, split.port or 26379
        except ValueError as exc:
            raise ConfigError(f"a Sentinel URL part is malformed: {exc}") from exc
        if not host:
            raise ConfigError("a Sentinel URL part has no host: sentinel://host:26379")
        nodes.append((host, port))
        if index == 0:
            if split.password:
                primary["password"] = unquote(split.password)
            if split.username:
                primary["username"] = unquote(split.username)
            db = split.path.strip("/")
            if db:
                if not db.isdigit():
                    raise ConfigError(f"the database of a Sentinel URL is a number, not {db!r}")
                primary["db"] = int(db)
    if not nodes:
        raise ConfigError("a Sentinel URL names no Sentinel: sentinel://host:26379;sentinel://host2:26379")
    return nodes, primary
