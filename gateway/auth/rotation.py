"""Signing key rotation: apply the policy (keys.plan_rotation) to the configured key store.

Run by beat itself (beat/scheduler.py runs the schedule's `rotate-signing-keys` entry in its own
process, at its start and then daily), and by hand with `agentful keys rotate`. Never a Celery
task: nothing about keys is sent to a worker, and no worker needs the gateway's code or the keys.

Daily rather than every `rotationDays`: the policy decides from the keys' own ages, so a beat
restart or a missed run delays nothing, replicas need no clock of their own, and retired keys are
removed within a day of their last token expiring.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.auth.keys import open_key_store, rotate
from tasks.settings import get_config, get_settings

log = logging.getLogger(__name__)


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
    else:
        log.info("signing keys checked in %s: none to make or remove", store.where)
    return result
