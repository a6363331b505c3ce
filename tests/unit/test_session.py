"""workers/session.py and workers/wire.py pure helpers: reconnect backoff, one-line exception
descriptions, and which faults are the connection's (restart the shared session) or the caller's."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, INVALID_PARAMS

from tasks.errors import InvalidArgumentsError, ServerStartError, ToolProtocolError
from workers.session import restart_delay_s
from workers.wire import call_error, describe, is_connection_fault


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (-3, 0.1),
        (0, 0.1),
        (1, 0.2),
        (2, 0.4),
        (3, 0.8),
        (6, 6.4),
        (7, 10.0),  # 12.8 capped
        (50, 10.0),
        (1023, 10.0),
    ],
)
def test_restart_delay_default(failures: int, delay: float) -> None:
    assert restart_delay_s(failures) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("failures", "base_s", "cap_s", "delay"),
    [
        (0, 1.0, 30.0, 1.0),
        (1, 1.0, 30.0, 2.0),
        (4, 1.0, 30.0, 16.0),
        (5, 1.0, 30.0, 30.0),
        (0, 5.0, 2.0, 5.0),  # failures=0 is the base, even above the cap
        (3, 0.0, 10.0, 0.0),
    ],
)
def test_restart_delay_custom(failures: int, base_s: float, cap_s: float, delay: float) -> None:
    assert restart_delay_s(failures, base_s=base_s, cap_s=cap_s) == pytest.approx(delay)


@given(failures=st.integers(min_value=0, max_value=5000))
def test_restart_delay_grows_and_is_capped(failures: int) -> None:
    now, after = restart_delay_s(failures), restart_delay_s(failures + 1)

    assert isinstance(now, float)
    assert 0.1 <= now <= after <= 10.0
    if after < 10.0:
        assert after == pytest.approx(now * 2)


@pytest.mark.parametrize("failures", [1024, 1025, 10**6, 2**64])
def test_restart_delay_does_not_overflow(failures: int) -> None:
    """A server failing every 10 s reaches 1024 failures in ~3 h; 0.1 * 2**1024 is not a float."""
    assert restart_delay_s(failures) == 10.0


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (RuntimeError(), "RuntimeError: RuntimeError"),
        (
            ServerStartError("command 'x' not found on PATH"),
            "ServerStartError: command 'x' not found on PATH",
        ),
        (ExceptionGroup("outer", [OSError("broken pipe")]), "OSError: broken pipe"),
        (
            ExceptionGroup(
                "outer", [ExceptionGroup("inner", [ConnectionResetError("reset"), KeyError("k")])]
            ),
            "ConnectionResetError: reset",
        ),
        (
            BaseExceptionGroup(
                "outer", [BaseExceptionGroup("mid", [ExceptionGroup("in", [TimeoutError()])])]
            ),
            "TimeoutError: TimeoutError",
        ),
        (MCPError(CONNECTION_CLOSED, "Connection closed"), "Connection closed"),
        (MCPError(INVALID_PARAMS, "Invalid params: 'x'"), "Invalid params: 'x'"),
        (ExceptionGroup("g", [MCPError(CONNECTION_CLOSED, "Connection closed")]), "Connection closed"),
        (MCPError(-1, ""), "MCPError"),
        (KeyboardInterrupt("stop"), "KeyboardInterrupt: stop"),
    ],
)
def test_describe(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (anyio.ClosedResourceError(), True),
        (anyio.BrokenResourceError(), True),
        (anyio.EndOfStream(), True),
        (ConnectionResetError(), True),
        (BrokenPipeError(), True),
        (ExceptionGroup("g", [anyio.ClosedResourceError(), OSError()]), True),
        # The caller's: arguments the SDK could not send, a bad value. The session lives on.
        (ValueError("Invalid timeout"), False),
        (RecursionError("maximum recursion depth exceeded"), False),
        (TypeError("not serialisable"), False),
        (ExceptionGroup("g", [anyio.ClosedResourceError(), ValueError()]), False),
    ],
)
def test_only_a_dead_connection_is_a_connection_fault(exc: BaseException, fault: bool) -> None:
    assert is_connection_fault(exc) is fault


def test_a_call_error_is_the_callers() -> None:
    assert isinstance(call_error("s", "t", RecursionError("deep")), InvalidArgumentsError)
    assert isinstance(call_error("s", "t", ValueError("nan")), InvalidArgumentsError)
    assert isinstance(call_error("s", "t", KeyError("x")), ToolProtocolError)
    assert "s/t" in str(call_error("s", "t", ValueError("nan")))
