"""Every agentful error survives the trip Celery gives it: stored as (class path, args) and
rebuilt on the caller's side with cls(*args)."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest
from celery import Celery

from tasks import errors

MODULE_EXCEPTIONS: list[type[BaseException]] = sorted(
    (
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ),
    key=lambda c: c.__name__,
)
ALL_ERRORS: list[type[errors.AgentfulError]] = [
    c for c in MODULE_EXCEPTIONS if issubclass(c, errors.AgentfulError)
]

TRANSIENT: set[type[errors.AgentfulError]] = {
    errors.BrokerUnavailableError,
    errors.NotReplicatedError,
    errors.CircuitOpenError,
    errors.ServerUnavailableError,
    errors.ServerCrashedError,
    errors.ServerNotReadyError,
    errors.ToolTimeoutError,
}
PERMANENT: set[type[errors.AgentfulError]] = {
    errors.ConfigError,
    errors.UnknownServerError,
    errors.UnknownToolError,
    errors.InvalidArgumentsError,
    errors.PayloadTooLargeError,
    errors.InvalidOptionError,
    errors.WorkspaceError,
    errors.AgentRunError,
    errors.AgentRunLostError,
    errors.ToolProtocolError,
    errors.ServerStartError,
}
ROOTS: set[type[errors.AgentfulError]] = {errors.AgentfulError, errors.TransientError, errors.PermanentError}

ARGS: list[tuple[Any, ...]] = [
    ("unknown MCP server 'x'; the cluster offers: git, time",),
    ("",),
    ("caf\u00e9 \u2014 \U0001f600",),
    ("with extra state", 3, {"k": "v"}),
]


def ids(cls: object) -> str:
    return cls.__name__ if isinstance(cls, type) else repr(cls)


@pytest.fixture(scope="module")
def backend() -> Any:
    app = Celery("unit-errors", backend="cache+memory://", set_as_current=False)
    return app.backend


def test_every_error_is_classified() -> None:
    """A new error class must be put in one branch (and in this table)."""
    assert ALL_ERRORS == MODULE_EXCEPTIONS  # every exception of the module has the one root
    assert set(ALL_ERRORS) == TRANSIENT | PERMANENT | ROOTS
    assert len(ALL_ERRORS) == 21


@pytest.mark.parametrize("cls", sorted(TRANSIENT, key=ids), ids=ids)
def test_transient(cls: type[errors.AgentfulError]) -> None:
    assert issubclass(cls, errors.TransientError)
    assert not issubclass(cls, errors.PermanentError)


@pytest.mark.parametrize("cls", sorted(PERMANENT, key=ids), ids=ids)
def test_permanent(cls: type[errors.AgentfulError]) -> None:
    assert issubclass(cls, errors.PermanentError)
    assert not issubclass(cls, errors.TransientError)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_all_share_one_root(cls: type[errors.AgentfulError]) -> None:
    assert issubclass(cls, errors.AgentfulError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("args", ARGS)
@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_rebuilt_from_args(cls: type[errors.AgentfulError], args: tuple[Any, ...]) -> None:
    exc = cls(*args)
    rebuilt = cls(*exc.args)

    assert type(rebuilt) is cls
    assert rebuilt.args == exc.args == args
    assert str(rebuilt) == str(exc) == args[0]
    assert rebuilt.message == args[0]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_pickle_round_trip(cls: type[errors.AgentfulError]) -> None:
    exc = cls("pickled", 1)
    rebuilt = pickle.loads(pickle.dumps(exc))

    assert type(rebuilt) is cls
    assert (str(rebuilt), rebuilt.args) == ("pickled", ("pickled", 1))


@pytest.mark.parametrize("args", ARGS[:1] + ARGS[3:])
@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_celery_exception_round_trip(
    backend: Any, cls: type[errors.AgentfulError], args: tuple[Any, ...]
) -> None:
    exc = cls(*args)
    prepared = backend.prepare_exception(exc)
    stored = json.loads(json.dumps(prepared))  # what the JSON result backend keeps (tuples -> lists)

    for payload in (prepared, stored):
        rebuilt = backend.exception_to_python(payload)
        assert type(rebuilt) is cls
        assert str(rebuilt) == args[0]
        assert tuple(rebuilt.args) == tuple(json.loads(json.dumps(list(args))))


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=ids)
def test_celery_failure_result_raises_the_same_class(backend: Any, cls: type[errors.AgentfulError]) -> None:
    task_id = f"unit-{uuid.uuid4()}"
    backend.mark_as_failure(task_id, cls("failed on the worker"))

    result = backend.app.AsyncResult(task_id, backend=backend)

    assert result.state == "FAILURE"
    with pytest.raises(cls) as info:
        result.get(timeout=1, propagate=True)
    assert type(info.value) is cls
    assert str(info.value) == "failed on the worker"
