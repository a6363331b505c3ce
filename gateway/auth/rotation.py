"""Beat's key rotation job: `agentful.rotate_signing_keys`, run daily on any worker.

Daily rather than every `rotationDays`: the policy (keys.plan_rotation) decides from the keys'
own ages, so a beat restart or a missed run delays nothing, replicas need no clock of their own,
and retired keys are removed within a day of their last token expiring. Registered by workers
through beat/schedule.py, which imports this module when gateway auth is on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.auth.keys import open_key_store, rotate
from tasks.app import app
from tasks.settings import get_config, get_settings

log = logging.getLogger(__name__)
TASK_NAME = "agentful.rotate_signing_keys"
CHECK_EVERY_S = 86_400.0


def rotate_now(*, force: bool = False, now: float | None = None) -> dict[str, Any]:
    """Apply the rotation policy to the configured key store; what it did, for logs and the CLI."""
    auth = get_config().gateway.auth
    store = open_key_store(auth, get_settings())
    plan, new = rotate(store, auth, time.time() if now is None else now, force=force)
    result = {
        "store": store.where,
        "new": new.kid if new else None,
        "retired": plan.retire,
        "removed": plan.remove,
    }
    if new or plan.remove:
        log.info("signing keys: new %s, retired %s, removed %s", result["new"], plan.retire, plan.remove)
    return result


@app.task(name=TASK_NAME)
def rotate_signing_keys(force: bool = False) -> dict[str, Any]:
    return rotate_now(force=force)


def beat_entry() -> dict[str, Any]:
    return {"task": TASK_NAME, "schedule": CHECK_EVERY_S, "options": {"expires": CHECK_EVERY_S}}
