"""Telemetry of every agentful role: Prometheus metrics, JSON logs, trace ids, OpenTelemetry, Sentry.

`metrics` defines every metric; `context` carries the trace id and the log fields of the current
call; `logs` formats them; `tracing` and `sentry` switch on when configured; `hooks` connects it
all to Celery's signals (imported by tasks.api, so every process that publishes has it).
"""
