"""MCP servers this project ships, run by workers like any other (each is `python -m` startable)."""
