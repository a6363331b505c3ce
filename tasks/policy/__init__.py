"""Pure decision logic of the cluster: retry backoff, circuit breakers, health, worker choice.

Plain data in, a decision out. The clock (`now_s`, wall-clock seconds, because breaker state is
shared between hosts through Redis) and randomness (`rng: random.Random`) are arguments, never
read inside. No Redis, no Celery: the thin shells in `workers/`, `beat/` and the router load
state, call these functions and store what they return.
"""

from tasks.policy.backoff import RetryPolicy, backoff_s, retry_delay_s
from tasks.policy.balancing import (
    Algorithm,
    Requirements,
    WorkerView,
    choose_with_affinity,
    choose_worker,
)
from tasks.policy.breaker import BreakerPolicy, BreakerState, BreakerStatus, allow, on_failure, on_success
from tasks.policy.health import HealthPolicy, HealthState, observe

__all__ = [
    "Algorithm",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "HealthPolicy",
    "HealthState",
    "Requirements",
    "RetryPolicy",
    "WorkerView",
    "allow",
    "backoff_s",
    "choose_with_affinity",
    "choose_worker",
    "observe",
    "on_failure",
    "on_success",
    "retry_delay_s",
]
