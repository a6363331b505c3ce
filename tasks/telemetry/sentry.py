"""Sentry error reporting through sentry-sdk's Celery integration, on when a DSN is set.

AGENTFUL_SENTRY_DSN in worker, beat and gateway. The Celery integration reports a task that
fails (not its retries) and, with `monitor_beat_tasks=True`, turns beat's schedule into Sentry
cron monitors. Nothing secret leaves: `send_default_pii` is off (the integration then replaces
task arguments with "[Filtered]"), local variables are not attached, the SDK's EventScrubber
removes denylisted keys (token, password, authorization, ... plus ours) at any depth, and
`scrub_event` blanks credentials inside strings (URL userinfo, bearer tokens).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

FILTERED = "[Filtered]"
EXTRA_DENYLIST = ["dsn", "arguments", "headers", "env", "client_secret", "access_token", "refresh_token"]
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def scrub_text(text: str) -> str:
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + FILTERED + "@", text)
    return _BEARER.sub(lambda m: m.group(1) + " " + FILTERED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v) for v in value)
    return value


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """before_send / before_send_transaction: credentials in any string of the event are blanked."""
    return _scrub(event)  # type: ignore[no-any-return]


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    return _scrub(crumb)  # type: ignore[no-any-return]


def setup(dsn: str | None, *, service: str, environment: str | None = None) -> bool:
    """Initialise sentry-sdk once for this process; False when no DSN is set."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    if sentry_sdk.get_client().is_active():
        return True
    sentry_sdk.init(
        dsn=dsn,
        # Every schedule entry is a cron monitor, except the health check: Sentry Crons takes
        # whole minutes only, and a check every 30 s would only log a warning each time.
        integrations=[CeleryIntegration(monitor_beat_tasks=True, exclude_beat_tasks=["health-check"])],
        send_default_pii=False,
        include_local_variables=False,
        event_scrubber=EventScrubber(denylist=[*DEFAULT_DENYLIST, *EXTRA_DENYLIST], recursive=True),
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,
        environment=environment,
        release="agentful-mcp@0.1.0",
    )
    sentry_sdk.set_tag("service", service)
    log.info("Sentry error reporting on for %s", service)
    return True


def flush(timeout_s: float = 5.0) -> None:
    import sys

    if "sentry_sdk" in sys.modules:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout_s)
