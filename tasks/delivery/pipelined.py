"""One Lua script run many times in one round trip, without redis-py's SCRIPT EXISTS first.

redis-py runs a `Script` inside a pipeline by sending `SCRIPT EXISTS` for it in a round trip of
its own before every `execute()` (`Pipeline.load_scripts`): a claim or a stored result then
cost two round trips instead of one (docs/performance.md). Here the pipeline sends EVALSHA
alone; only when the server answers NOSCRIPT (a broker that restarted and lost its script
cache) is the script loaded and the refused entries, and only those, sent again. A refused
EVALSHA ran nothing, so sending it again runs it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

Calls = Sequence[tuple[Sequence[Any], Sequence[Any]]]  # (keys, args) of each run


def evalsha_many(
    client: Any,
    script: Any,
    calls: Calls,
    *,
    wait: tuple[int, int] | None = None,
) -> list[Any]:
    """The replies of `script` (a redis-py `Script` of `client`) run once per (keys, args), in
    order, in one round trip. `wait` (replicas, ms): WAIT after them, its reply last. A reply
    that is an error raises it, as `Pipeline.execute` does."""
    replies = _execute(client, script, calls, wait)
    refused = [i for i, r in enumerate(replies[: len(calls)]) if isinstance(r, NoScriptError)]
    if refused:
        client.script_load(script.script)
        again = _execute(client, script, [calls[i] for i in refused], wait)
        for i, reply in zip(refused, again, strict=False):
            replies[i] = reply
        if wait is not None:
            replies[-1] = again[-1]
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _execute(client: Any, script: Any, calls: Calls, wait: tuple[int, int] | None) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    if wait is not None:
        pipe.wait(*wait)
    return list(pipe.execute(raise_on_error=False))
