"""The MCP gateway: one MCP endpoint (stdio or Streamable HTTP) in front of the whole cluster.

`agentful gateway` runs it; `gateway.app.build_app(config)` is its ASGI app. docs/gateway.md.
"""
