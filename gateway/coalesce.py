"""tools/call requests that arrive together travel together, as one `agentful.call_batch`.

Each request is checked on its own as it arrives (tasks.batch.prepare_call: a bad one gets its
own error at once and touches nobody else's). The checked calls collect until the event loop has
run every callback that is ready now (`loop.call_soon`: no timer, so a lone request leaves in the
same turn of the loop, as before), then go as batches (tasks.batch.send_calls): one publish for
all of them instead of one each, and on the worker one hand-off, one claim and one store round
trip per batch instead of per call. A request that asked for progress goes alone: batches do not
relay progress.

The wait for each result does not change: every call keeps its own task id, registered with the
gateway's ResultWaiter before it is queued.
"""

from __future__ import annotations

import asyncio
import logging

from tasks.batch import CallsNotQueuedError, PreparedCall, send_calls

log = logging.getLogger(__name__)


class Coalescer:
    def __init__(self) -> None:
        self._pending: list[tuple[PreparedCall, asyncio.Future[None]]] = []
        self.batches = 0  # messages' worth of flushes, and the calls they carried (for tests, bench)
        self.calls = 0

    def submit(self, call: PreparedCall) -> asyncio.Future[None]:
        """Queue `call` with whatever else arrives in this turn of the loop; the future is done
        once it is queued, or raises what kept it from the queue (BrokerUnavailableError)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((call, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.batches += 1
        self.calls += len(pending)
        queued: frozenset[str] = frozenset()
        error: BaseException | None = None
        try:
            send_calls([call for call, _ in pending])
        except CallsNotQueuedError as exc:
            queued, error = exc.queued, exc
        except Exception as exc:  # nothing was queued
            error = exc
        for call, future in pending:
            if future.done():  # its request was cancelled meanwhile
                continue
            if error is None or call.id in queued:
                future.set_result(None)
            else:
                future.set_exception(error)
