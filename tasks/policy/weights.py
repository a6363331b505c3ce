"""Deterministic weighted choice driven by a counter, with exact shares and spread-out turns.

Weights are integer units. Over any `sum(units)` consecutive counter values, item i is picked
exactly `units[i]` times. Reading a cumulative table at `counter % total` would give those
shares but in blocks (100 calls in a row to one worker, then 100 to the next); instead the slot
is first permuted by a stride coprime with the total, near `total / golden ratio`, so the turns
of each item are spread evenly through the cycle. A permutation of the slots keeps the shares.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from functools import reduce
from itertools import accumulate

_INVERSE_GOLDEN = (math.sqrt(5) - 1) / 2


def weighted_index(units: Sequence[int], counter: int) -> int:
    """The index in `units` (each >= 1) chosen for `counter`; any int, negative included."""
    if not units or min(units) < 1:
        raise ValueError(f"weights must be a non-empty list of integers >= 1, got {list(units)}")
    common = reduce(math.gcd, units)
    table = list(accumulate(u // common for u in units))
    total = table[-1]
    slot = (counter % total) * spread_stride(total) % total
    return bisect.bisect_right(table, slot)


def spread_stride(total: int) -> int:
    """The smallest stride >= round(total / golden ratio) coprime with `total` (1 for total <= 2)."""
    stride = max(1, round(total * _INVERSE_GOLDEN))
    while math.gcd(stride, total) != 1:
        stride += 1
    return stride
