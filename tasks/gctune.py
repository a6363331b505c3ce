"""The garbage collector of a long-running process with many calls in flight (a worker, the gateway).

CPython collects its youngest generation every 700 allocations by default, and each collection
walks every object that young generations hold. A worker with hundreds of calls in flight keeps
many objects alive across collections: they are walked again and again, and promoted, so the
older generations fill and their collections, which walk everything, come often. With 16 batches
of 100 calls on one session, a call cost 588 µs of CPU with the defaults and 240 µs with what this
module sets (docs/performance.md). Two settings, both CPython's own:

- `gc.freeze()` once the process is up: what it imported and built to start (the MCP SDK,
  pydantic's schemas, Celery, the sessions) is never walked again.
- `gc.set_threshold(10000, 50, 100)`: a young collection every 10,000 allocations, older ones
  more rarely. Cycles still get collected, later; a process holds at most the garbage of
  10,000 allocations more.

`AGENTFUL_GC_THRESHOLD` overrides the thresholds ("700,10,10": Python's own, after the freeze;
"off": no change at all, no freeze either).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)
DEFAULT = "10000,50,100"


def parse(spec: str) -> tuple[int, int, int] | None:
    """`"g0,g1,g2"` as three thresholds, None for "off" (Settings checked the form already)."""
    if spec.strip().lower() == "off":
        return None
    g0, g1, g2 = (int(p) for p in spec.split(","))
    return g0, g1, g2


def tune(spec: str = DEFAULT) -> None:
    """Freeze what the process holds now and set the thresholds (see the module)."""
    thresholds = parse(spec)
    if thresholds is None:
        return
    gc.collect()  # what start-up left as garbage goes now, not frozen for good
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.info("gc: %s objects frozen, thresholds %s", gc.get_freeze_count(), thresholds)
