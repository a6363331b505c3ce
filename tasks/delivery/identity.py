"""Which incarnation of which worker this process is.

A worker node (`celery worker -n NAME`) lives through incarnations: one per start, and a new
one when it learns it was declared dead (paused past its heartbeat's expiry, cut off from the
broker) and so fenced. Everything a worker holds is kept under its incarnation: the messages it
took (its own unacked hash), the claims of the calls it runs. A dead incarnation's messages are
restored and its claims can be taken over; a fenced incarnation takes, acknowledges and stores
nothing more, while the worker carries on as a new one.

The id lives in an anonymous shared mapping made at import, before Celery forks a prefork
pool, so pool processes read the id the main process set, and see a new one at once.
Producers (the gateway, beat, user code) have no incarnation: `current()` is None there.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable

log = logging.getLogger(__name__)
_SIZE = 240  # node and incarnation id; then the lease: when it was last renewed (monotonic)
_LEASE = struct.Struct("d")
_shared = mmap.mmap(-1, _SIZE + _LEASE.size)  # MAP_SHARED | MAP_ANONYMOUS: inherited across fork
_lock = threading.Lock()
_registered: set[str] = set()
# Set by the worker runtime (workers/boot.py): records an incarnation in the registry. The
# transport calls it before it takes anything under a new incarnation.
registrar: Callable[[str], None] | None = None


def _read() -> tuple[str, str] | None:
    raw = _shared[:_SIZE].split(b"\0", 1)[0]
    if not raw:
        return None
    node, _, incarnation = raw.decode().partition("\n")
    return node, incarnation


def _write(node: str, incarnation: str) -> None:
    data = f"{node}\n{incarnation}".encode()
    if len(data) >= _SIZE:
        raise ValueError(f"worker node name too long for an incarnation id: {node!r}")
    _shared[:_SIZE] = data + b"\0" * (_SIZE - len(data))


def current() -> str | None:
    """This process's incarnation id, or None outside a worker."""
    found = _read()
    return found[1] if found else None


def node() -> str | None:
    found = _read()
    return found[0] if found else None


def begin(node_name: str) -> str:
    """A worker starting as `node_name`: its first incarnation."""
    with _lock:
        incarnation = f"{node_name}/{uuid.uuid4().hex[:12]}"
        _write(node_name, incarnation)
    return incarnation


def rotate(fenced: str) -> str:
    """`fenced` was declared dead: become a new incarnation of the same node (once per fence:
    two threads that both saw the fence get the same new id)."""
    with _lock:
        found = _read()
        if found is None:
            raise RuntimeError("no incarnation to rotate: not a worker process")
        node_name, incarnation = found
        if incarnation != fenced:
            return incarnation
        incarnation = f"{node_name}/{uuid.uuid4().hex[:12]}"
        _write(node_name, incarnation)
    log.warning(
        "worker incarnation %s was declared dead by the cluster (paused or cut off past its "
        "heartbeat's expiry); its calls were handed to others; it goes on as incarnation %s",
        fenced,
        incarnation,
    )
    return incarnation


def renew_lease(sent_at: float | None = None) -> None:
    """The registry accepted a heartbeat of this incarnation, sent at `sent_at` (monotonic;
    default now). Stamped with when it was sent, not when the reply came, the lease's age is
    never less than the time since the registry entry was written."""
    _shared[_SIZE : _SIZE + _LEASE.size] = _LEASE.pack(time.monotonic() if sent_at is None else sent_at)


def lease_age_s() -> float:
    """Seconds since the last accepted heartbeat (CLOCK_MONOTONIC is one clock for every process
    of the host); infinite before the first. Past the heartbeat's expiry, this incarnation may
    have been declared dead: it checks with the store before it acts on a call."""
    (at,) = _LEASE.unpack(_shared[_SIZE : _SIZE + _LEASE.size])
    return time.monotonic() - at if at else float("inf")


def describe() -> dict[str, str]:
    """What the registry keeps of this incarnation."""
    return {"node": node() or "", "pid": str(os.getpid()), "host": socket.gethostname()}


def ensure_registered(incarnation: str) -> None:
    """Record `incarnation` in the registry once, before anything is taken under it, so that a
    death right after its first take is seen (and what it took restored) by the failover."""
    if incarnation in _registered or registrar is None:
        return
    with _lock:
        if incarnation in _registered:
            return
        registrar(incarnation)  # raises (the broker is down): tried again at the next take
        _registered.add(incarnation)


def forget() -> None:
    """Tests: this process is no worker any more."""
    with _lock:
        _shared[: _SIZE + _LEASE.size] = b"\0" * (_SIZE + _LEASE.size)
        _registered.clear()
