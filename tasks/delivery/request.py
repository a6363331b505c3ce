"""Celery's Request for `call_tool`, which frees a call's claim when its execution is lost.

Under prefork a pool process can die under a call (killed, out of memory). Celery then requeues
the message (`task_reject_on_worker_lost`), but the call's claim is still held by this worker's
incarnation, which lives on: the copy would wait for a result nobody is computing. This Request
(Celery's documented `Task.Request` extension point) frees the claim first.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from tasks.delivery import identity

log = logging.getLogger(__name__)


class CallRequest(Request):  # type: ignore[misc]
    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            self._release_claim()
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _release_claim(self) -> None:
        from tasks.api import claims_store

        incarnation, store = identity.current(), claims_store()
        if incarnation is None or store is None:
            return
        try:
            if store.release(self.id, incarnation):
                log.warning(
                    "call %s: its pool process died under it; its claim is free for the requeued copy",
                    self.id,
                )
        except Exception as exc:  # the copy then waits, and is requeued, until the owner is gone
            log.warning("call %s: could not free its claim: %s", self.id, exc)
