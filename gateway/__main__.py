"""`python -m gateway [--stdio] [--config FILE] [--host H] [--port N]`: the same as `agentful gateway`."""

from __future__ import annotations

import sys

from cli.main import app

if __name__ == "__main__":
    sys.argv[1:1] = ["gateway"]
    app()
