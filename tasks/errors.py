"""Errors of agentful-mcp: one root, a transient branch (retried) and a permanent one (not).

Celery stores an exception in the result backend as its class path and `args`, and rebuilds it
on the caller's side with `cls(*args)`. So every error here takes its whole state as positional
arguments and passes them all to `super().__init__`: the caller then gets the same class back
from `AsyncResult.get()` and can `except UnknownToolError:`.

A tool's own failure (`is_error` in the MCP result) is not an exception: it is a result.
"""

from __future__ import annotations


class AgentfulError(Exception):
    """Root of every error agentful-mcp raises on purpose."""

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransientError(AgentfulError):
    """A fault of the path, not of the call: trying again may succeed."""


class PermanentError(AgentfulError):
    """A fault of the call itself: trying again gives the same answer."""


# --- permanent -----------------------------------------------------------------------------


class ConfigError(PermanentError):
    """The configuration (file or environment) is invalid."""


class UnknownServerError(PermanentError):
    """No MCP server of that name is configured in the cluster."""


class UnknownToolError(PermanentError):
    """The MCP server has no tool of that name."""


class InvalidArgumentsError(PermanentError):
    """The arguments fail the tool's input schema, or are not a JSON object."""


class PayloadTooLargeError(PermanentError):
    """The arguments are larger than the configured maximum."""


class InvalidOptionError(PermanentError):
    """An option of the call (timeout_s, priority, countdown, eta, expires, ...) is invalid."""


class WorkspaceError(PermanentError):
    """A project's workspace could not be made on the worker (clone failed, disk full, ...)."""


class AgentRunError(PermanentError):
    """A headless agent run failed: the agent exited badly, or its model endpoint failed."""


class AgentRunLostError(PermanentError):
    """The worker running an agent run died mid-run; by policy it is not run again."""


class ToolProtocolError(PermanentError):
    """The MCP server answered the call with a JSON-RPC error instead of a result."""


class ServerStartError(PermanentError):
    """The MCP server could not be started or connected (bad command, crash at start, refused)."""


# --- transient -----------------------------------------------------------------------------


class BrokerUnavailableError(TransientError):
    """The broker (or the result store) could not be reached."""


class NotReplicatedError(BrokerUnavailableError):
    """The broker's primary took a write, but too few replicas confirmed it in time (Redis WAIT,
    AGENTFUL_WAIT_REPLICAS): a failover now could lose it. Resubmitting with the same idempotency
    key is safe."""


class ServerCrashedError(TransientError):
    """The MCP server's connection closed while a call was in flight."""


class ServerNotReadyError(TransientError):
    """The MCP server's session is not connected yet (starting or restarting)."""


class ServerUnavailableError(TransientError):
    """A Streamable HTTP MCP server could not be reached (refused, down, 5xx): it may come back."""


class CircuitOpenError(TransientError):
    """This worker's circuit breaker for the server is open: the call is retried elsewhere."""


class ToolTimeoutError(TransientError):
    """The tool call took longer than its timeout; the server was told to cancel it."""
