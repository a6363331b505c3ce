"""What every provider is and the error it raises: the Protocol and ProviderError.

Here, not in the package's __init__, so that the providers (local, pool, compose, kubernetes)
import this module and the package's `make_provider` imports them: one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


class ProviderError(RuntimeError):
    """A provider could not read or change the number of instances (logged by beat, retried at
    the next evaluation; the decision is recorded with the error)."""


@runtime_checkable
class Provider(Protocol):
    name: str

    def current(self) -> int:
        """The instances it runs now (starting ones included, stopping ones not)."""
        ...

    def candidates(self, idle: Mapping[str, float]) -> dict[str, float]:
        """Of the idle workers (node -> seconds idle), those this provider can remove by name."""
        ...

    def scale_to(self, n: int, *, stop: Sequence[str] = ()) -> None:
        """Run `n` instances; when fewer, remove those of `stop` first (warm: they finish what
        they hold)."""
        ...
