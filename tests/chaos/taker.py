"""A consumer the chaos tier SIGKILLs at random moments: it takes messages through agentful's
Redis transport, records each one in a ledger (fsynced), then acknowledges it.

    python -m tests.chaos.taker BROKER_URL QUEUE LEDGER [--until-empty]

It prints its incarnation first. With --until-empty it exits once the queue stays empty for a
second; otherwise it takes until it is killed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    url, queue, ledger = sys.argv[1], sys.argv[2], sys.argv[3]
    until_empty = "--until-empty" in sys.argv
    from kombu.connection import Connection

    from tasks.delivery import identity

    print(identity.begin(f"taker-{os.getpid()}@chaos"), flush=True)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with Connection(url, transport="tasks.delivery.transport:Transport") as conn:
        simple = conn.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(timeout=1.0)
            except Empty:
                if until_empty:
                    return
                continue
            os.write(fd, f"{message.payload['n']}\n".encode())
            os.fsync(fd)
            message.ack()


if __name__ == "__main__":
    main()
