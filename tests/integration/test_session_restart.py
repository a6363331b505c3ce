"""A server that keeps crashing at start is retried with growing backoff, not in a hot loop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tasks.config_file import ConfigFile, ServerSpec
from workers.hub import SessionHub
from workers.launcher import wait_for
from workers.session import restart_delay_s


def test_a_crashing_server_is_restarted_with_backoff(tmp_path: Path) -> None:
    spec = ServerSpec(command=sys.executable, args=["-c", "import sys; sys.exit('no')"])
    hub = SessionHub(
        ConfigFile(servers={"crashy": spec}), ["crashy"], log_dir=tmp_path, store=None, worker="t"
    )
    started = time.monotonic()
    hub.start()
    try:
        session = hub.sessions["crashy"]
        assert wait_for(lambda: session.failures >= 4, 30), f"only {session.failures} attempts"
        elapsed = time.monotonic() - started
        # between the 4 attempts lie at least the first 3 backoff delays (0.2 + 0.4 + 0.8 s)
        assert elapsed >= sum(restart_delay_s(n) for n in (1, 2, 3)) * 0.9, f"4 attempts in {elapsed:.2f} s"
        assert session.state == "failed" and "no" in (session.last_error or "")
    finally:
        hub.close()
