"""Health of one worker (or one server on it) from consecutive check results, with hysteresis.

A healthy target turns unhealthy after `unhealthy_threshold` consecutive failed checks; an
unhealthy one turns healthy again after `healthy_threshold` consecutive good ones. One odd
result in a run of the other kind resets the run, so a flapping target does not flip each time.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config_file import HealthCheckSection


@dataclass(frozen=True)
class HealthPolicy:
    """The seed's `healthCheck` thresholds, as counts of consecutive checks."""

    unhealthy_threshold: int = 3
    healthy_threshold: int = 2

    def __post_init__(self) -> None:
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError(
                f"thresholds must be >= 1, got unhealthy={self.unhealthy_threshold} "
                f"healthy={self.healthy_threshold}"
            )

    @classmethod
    def from_config(cls, health_check: HealthCheckSection) -> HealthPolicy:
        """From the config file's `mcp.client.loadBalancing.healthCheck` section."""
        return cls(
            unhealthy_threshold=health_check.unhealthy_threshold,
            healthy_threshold=health_check.healthy_threshold,
        )


@dataclass(frozen=True)
class HealthState:
    """At most one of the two counters is non-zero: the current run of like results."""

    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0 or self.consecutive_successes < 0:
            raise ValueError("consecutive counts must be >= 0")
        if self.consecutive_failures and self.consecutive_successes:
            raise ValueError("a run is of failures or of successes, not both")


def observe(state: HealthState, ok: bool, policy: HealthPolicy) -> HealthState:
    """The state after one more check result `ok`: the run it extends grows, the other resets."""
    if ok:
        successes = state.consecutive_successes + 1
        healthy = state.healthy or successes >= policy.healthy_threshold
        return HealthState(healthy=healthy, consecutive_successes=successes)
    failures = state.consecutive_failures + 1
    healthy = state.healthy and failures < policy.unhealthy_threshold
    return HealthState(healthy=healthy, consecutive_failures=failures)
