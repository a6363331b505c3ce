"""The Celery application. Configured from `celeryconfig`, which is computed from Settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from tasks.settings import get_settings

app = Celery("agentful")
app.config_from_object("celeryconfig")


def _setup_signing(sender: Celery, **_: Any) -> None:
    """Message signing, when celeryconfig switched it on (the `auth` serializer, key, cert and
    store): registers the signing serializer in kombu's process-wide registry and disables every
    decoder but JSON (task events, for Flower) and the signed one (application/data). It runs when
    the configuration is first read, before anything is sent or consumed, in every process that
    uses this app: the gateway, beat, the CLI and the workers all sign and verify alike."""
    if sender.conf.task_serializer != "auth":
        return
    password = get_settings().signing_key_password
    sender.setup_security(
        allowed_serializers=["json", "application/data"],
        key_password=password.get_secret_value() if password is not None else None,
    )


app.on_after_configure.connect(_setup_signing, weak=False)
