"""A user's program, run as a subprocess against a broker named in its environment.

    python tests/integration/client.py call SERVER TOOL JSON [TIMEOUT]   -> prints the result
    python tests/integration/client.py submit SERVER TOOL JSON           -> prints the task id
    python tests/integration/client.py get TASK_ID [TIMEOUT]             -> prints the result
Errors: exit 1 with `ErrorClass: message` on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from tasks import call_tool
    from tasks.errors import AgentfulError

    mode, rest = sys.argv[1], sys.argv[2:]
    try:
        if mode == "call":
            timeout = float(rest[3]) if len(rest) > 3 else 30.0
            print(json.dumps(call_tool.delay(rest[0], rest[1], json.loads(rest[2])).get(timeout=timeout)))
        elif mode == "submit":
            print(call_tool.delay(rest[0], rest[1], json.loads(rest[2])).id)
        elif mode == "get":
            timeout = float(rest[1]) if len(rest) > 1 else 30.0
            print(json.dumps(call_tool.AsyncResult(rest[0]).get(timeout=timeout)))
        else:
            sys.exit(f"unknown mode {mode}")
    except AgentfulError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
