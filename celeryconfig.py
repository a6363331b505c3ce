"""Celery settings, computed from agentful's Settings. No logic lives here.

`python -m celeryconfig` prints them.
"""

from __future__ import annotations

from beat.schedule import beat_schedule as _beat_schedule
from tasks.delivery.backend import BACKEND_CLASS as _FENCED_BACKEND
from tasks.delivery.backend import SENTINEL_BACKEND_CLASS as _FENCED_SENTINEL_BACKEND
from tasks.redis_urls import KEEPALIVE_OPTIONS as _KEEPALIVE
from tasks.redis_urls import is_redis_url as _is_redis_url
from tasks.redis_urls import is_sentinel_url as _is_sentinel_url
from tasks.redisconn import sentinel_node_options as _sentinel_node_options
from tasks.routing import CONTROL_QUEUE
from tasks.settings import get_config, get_settings, resolved_broker_url, resolved_result_backend

_settings = get_settings()

broker_url = resolved_broker_url(_settings)
_backend_url = resolved_result_backend(_settings, broker_url)
# A Redis backend stores a call's result only under its claim (docs/reliability.md): Celery's
# RedisBackend with one script for the store (tasks/delivery/backend.py), named in Celery's
# `class+url` form. Everything else reads the plain URL from tasks.settings.
_backend_class = _FENCED_SENTINEL_BACKEND if _is_sentinel_url(_backend_url) else _FENCED_BACKEND
result_backend = f"{_backend_class}+{_backend_url}" if _is_redis_url(_backend_url) else _backend_url
if _is_redis_url(broker_url):
    # kombu's Redis transport with an atomic take (tasks/delivery/transport.py).
    broker_transport = "tasks.delivery.transport:Transport"
if _is_sentinel_url(broker_url):
    broker_transport = "tasks.delivery.transport:SentinelTransport"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
# Message signing (docs/security-transport.md), on when AGENTFUL_SIGNING_KEY/_CERT/_CERT_STORE are
# set: Celery's `auth` serializer signs every task and control message with the key, and a
# consumer accepts only what a certificate of the store verifies. tasks/app.py calls
# app.setup_security() (it reads these), so every process importing `tasks` signs. Results stay
# JSON: the gateway reads them straight from Redis (gateway/results.py), and what a worker may
# run is what signing protects.
if _settings.signing_enabled:
    task_serializer = "auth"
    accept_content = ["auth"]
    security_key = str(_settings.signing_key)
    security_certificate = str(_settings.signing_cert)
    security_cert_store = str(_settings.signing_cert_store)
    security_digest = "sha256"
result_extended = True  # Flower and AsyncResult show name, args and worker
result_expires = _settings.result_expires_s

task_default_queue = CONTROL_QUEUE
task_routes = ("tasks.routing.route_task",)
task_create_missing_queues = True

# Nothing lost: a call is acknowledged after it ran, and a worker killed mid-call puts it back.
task_acks_late = True
task_reject_on_worker_lost = True
# Reserve at most 2 calls per slot: with long tool calls a worker must not hoard the queue.
worker_prefetch_multiplier = 2
broker_connection_retry_on_startup = True
# After a reconnect Celery lowers the prefetch count and raises it again from the ack of each call
# that was running (a promise that runs basic.qos, which waits for qos-ok, on the thread that
# acks). Under the threads pool that thread is a pool thread reading the consumer's py-amqp
# connection while the consumer reads it too: frames are torn ("UnexpectedFrame"), the consumer
# reconnects again and again, and a RabbitMQ restart took 19-54 s to drain instead of < 15 s.
# Off, the prefetch count is the configured one at once after a reconnect (the claims, not the
# prefetch count, keep a call from running twice); basic.qos is then only sent by the consumer.
worker_enable_prefetch_count_reduction = False

# A producer whose broker is down gets an error in seconds, not a hang.
broker_connection_timeout = 4.0
# A worker whose broker restarts retries for ever, after 1 s and then every 2 s (Celery's consumer
# uses kombu's intervals, 2 s growing to 30 s: calls would wait long after the broker is back).
broker_connection_max_retries = None
worker_consumer = "workers.consumer:Consumer"
# A result that cannot be stored while the broker restarts is retried (up to ~60 s), not lost.
result_backend_always_retry = True
result_backend_max_retries = 30
result_backend_base_sleep_between_retries_ms = 200
result_backend_max_sleep_between_retries_ms = 2000
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.3,
    "interval_max": 0.5,
}
broker_transport_options: dict[str, object] = {"socket_connect_timeout": 3, "socket_timeout": 10}
if _is_redis_url(broker_url):
    # A connection to a broker host that vanished fails in ~11 s, not minutes (tasks/redis_urls.py).
    broker_transport_options.update(socket_keepalive=True, socket_keepalive_options=_KEEPALIVE)
    # Over Sentinel, `.delay()` returns once a replica has the call too (tasks/delivery/transport.py).
    broker_transport_options["wait_replicas"] = _settings.replicas_to_wait(broker_url)
    broker_transport_options["wait_replicas_ms"] = _settings.wait_replicas_ms
# Over Sentinel (docs/deployment.md "No single broker host"): kombu and Celery ask the Sentinels
# for the primary on every new connection; a dead Sentinel costs a short timeout, no retries.
_sentinel_options: dict[str, object] = {
    "master_name": _settings.sentinel_master,
    "sentinel_kwargs": _sentinel_node_options(),
}
if _is_sentinel_url(broker_url):
    broker_transport_options.update(_sentinel_options)
if _is_sentinel_url(_backend_url):
    result_backend_transport_options = {
        **_sentinel_options,
        "wait_replicas": _settings.replicas_to_wait(_backend_url),
        "wait_replicas_ms": _settings.wait_replicas_ms,
    }
if not _is_redis_url(broker_url):
    # RabbitMQ: `.delay()` returns once the broker has the message (publisher confirms), so a
    # broker killed right after loses no call; its queues and messages are durable.
    broker_transport_options["confirm_publish"] = True
    # AMQP heartbeats every 10 s (Celery's default is 120): RabbitMQ hands the calls a paused or
    # cut-off worker held to others after two missed ones, not after four minutes.
    broker_heartbeat = 10

# Priorities are Celery's own, and what a number means depends on the broker (README
# "Priorities and schedules"). RabbitMQ: every queue is declared with x-max-priority 9, so 0-9
# with 9 the most urgent (a queue declared earlier without it must be deleted once: RabbitMQ
# refuses to redeclare a queue with other arguments). Redis/Valkey: kombu keeps one list per
# band of kombu's default `priority_steps` [0, 3, 6, 9], the band of 0 served first. The bands
# stay kombu's defaults because workers/failover.py drains a dead worker's queue through a
# plain kombu Connection, which knows only those; change both together.
task_queue_max_priority = 9
redis_socket_connect_timeout = 3
redis_socket_timeout = 10

# The worker runtime (MCP sessions, signal hooks) is imported by workers only: `tasks` never
# imports `workers`, so a producer stays light.
imports = ("workers.boot",)

# Task events cost broker traffic on every call; Flower switches them on while it watches
# (its `enable_events` control command). `agentful up` starts workers with -E.
worker_send_task_events = False
worker_hijack_root_logger = False

beat_schedule = _beat_schedule(get_config())
# Runs the schedule only while this beat holds the leader lease (one beat acts), and runs beat's
# own jobs (autoscaler, signing key rotation) inside beat (beat/scheduler.py, docs/autoscaling.md).
beat_scheduler = "beat.scheduler:AgentfulScheduler"

if __name__ == "__main__":
    for _key, _value in sorted(globals().items()):
        if not _key.startswith("_") and _key.islower() and not callable(_value) and _key != "annotations":
            print(f"{_key} = {_value!r}")
