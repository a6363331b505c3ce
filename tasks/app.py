"""The Celery application. Configured from `celeryconfig`, which is computed from Settings."""

from __future__ import annotations

from celery import Celery

app = Celery("agentful")
app.config_from_object("celeryconfig")
