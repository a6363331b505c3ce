"""Redis key names of the delivery layer, in one place (workers/failover.py, the transport, the
claims and `agentful status` read the same keys)."""

from __future__ import annotations

PREFIX = "agentful:"
# Every live (or not yet reaped) worker incarnation, scored by the server time of its last beat.
INCARNATIONS = PREFIX + "incarnations"
# An incarnation's description: node, pid, host, started (a hash).
INCARNATION = PREFIX + "incarnation:"
# Set when an incarnation is declared dead; it then takes, acknowledges and stores nothing more.
FENCED = PREFIX + "fenced:"
FENCED_TTL_S = 7 * 86_400
# Monotonic counter: every claim taken gets the next token.
FENCE_COUNTER = PREFIX + "fence"
# One claim per call: owner incarnation, token, state, attempt (a hash).
CLAIM = PREFIX + "claim:"
# Doorbell list of a queue: one entry per publish wakes one idle consumer.
BELL = PREFIX + "bell:"
BELL_CAP = 1000  # a doorbell longer than this is trimmed: it only wakes consumers


def unacked(incarnation: str) -> str:
    return f"{PREFIX}unacked:{incarnation}"


def unacked_index(incarnation: str) -> str:
    return f"{PREFIX}unacked_index:{incarnation}"


def unacked_mutex(incarnation: str) -> str:
    return f"{PREFIX}unacked_mutex:{incarnation}"


def fenced(incarnation: str) -> str:
    return FENCED + incarnation


def bell(queue: str) -> str:
    return BELL + queue


def claim(call_key: str) -> str:
    return CLAIM + call_key
