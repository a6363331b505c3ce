"""A delay line in front of a TCP service: every byte arrives half the round trip late, in each
direction, in order, at full throughput. Used where the kernel lacks `sch_netem` (this machine's
does: `tc qdisc ... netem` answers "Specified qdisc kind is unknown"), in front of the broker,
which every call's round trips cross.

    python -m tests.hosts.delay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT RTT_FILE

RTT_FILE holds the round trip in milliseconds (re-read every 0.2 s; a missing or empty file is
0), so the delay changes without cutting the connections that cross it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

RTT_FILE = Path(sys.argv[5]) if len(sys.argv) > 5 else Path("rtt")
_half_s = 0.0


async def _watch() -> None:
    global _half_s
    while True:
        try:
            text = RTT_FILE.read_text().strip()
            _half_s = float(text) / 2000 if text else 0.0
        except (OSError, ValueError):
            _half_s = 0.0
        await asyncio.sleep(0.2)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy reader to writer, each chunk delivered `_half_s` after it was read."""
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await line.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            line.put_nowait((time.monotonic() + _half_s, data))
    except (ConnectionError, OSError):
        pass
    finally:
        line.put_nowait((time.monotonic() + _half_s, b""))
        with contextlib.suppress(ConnectionError, OSError):
            await sender


async def _serve(target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    watcher = asyncio.create_task(_watch())
    async with server:
        await server.serve_forever()
    watcher.cancel()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[3], int(sys.argv[4])))
