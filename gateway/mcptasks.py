"""MCP Tasks (the 2025-11-25 `tasks` utility) backed by Celery results: durable, not in memory.

The MCP taskId is the Celery task id of the call. Its status is read from the result backend
(`celery-task-meta-<id>`); what Celery does not keep (who started it, when, its ttl, whether
it was cancelled) is a small Redis hash `agentful:gateway:task:<id>`, and each owner's tasks
are a sorted set `agentful:gateway:tasks:<owner>` (by creation time) for tasks/list. Both
expire with the results (`AGENTFUL_RESULT_EXPIRES_S`). So a client can start a call, drop the
connection, and ask any gateway of the cluster for it later.

Celery state -> MCP status: nothing stored yet, PENDING, RECEIVED, STARTED, RETRY -> working;
SUCCESS -> completed (a tool's own error is still a completed call: the result says
isError); FAILURE -> failed; REVOKED, or cancelled through tasks/cancel -> cancelled.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from celery import states

if TYPE_CHECKING:
    from gateway.results import ResultWaiter

TASK_KEY = "agentful:gateway:task:"
OWNER_KEY = "agentful:gateway:tasks:"
POLL_INTERVAL_MS = 500
PAGE_SIZE = 100
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def task_status(meta: dict[str, Any] | None, record: dict[str, Any]) -> str:
    """The MCP status of a task from its Celery meta and the gateway's record."""
    if record.get("cancelled") == "1":
        return "cancelled"
    state = (meta or {}).get("status")
    if state == states.SUCCESS:
        return "completed"
    if state == states.FAILURE:
        return "failed"
    if state == states.REVOKED:
        return "cancelled"
    return "working"


def _status_message(meta: dict[str, Any] | None, status: str) -> str | None:
    if status == "failed" and meta is not None:
        result = meta.get("result")
        if isinstance(result, dict):
            return f"{result.get('exc_type', 'Error')}: {result.get('exc_message')}"
    if status == "working" and (meta or {}).get("status") == states.RETRY:
        return "retrying after a transient fault"
    return None


class TaskStore:
    """The gateway's records of MCP tasks, in the Redis of the result backend."""

    def __init__(self, waiter: ResultWaiter, *, ttl_s: int) -> None:
        self.waiter = waiter
        self.ttl_s = ttl_s

    async def create(
        self, task_id: str, owner: str, server: str, tool: str, requested_ttl_ms: int | None
    ) -> dict[str, Any]:
        now = time.time()
        ttl_ms = self.ttl_s * 1000 if requested_ttl_ms is None else min(requested_ttl_ms, self.ttl_s * 1000)
        ttl_ms = max(ttl_ms, 1000)
        record = {
            "owner": owner,
            "server": server,
            "tool": tool,
            "created": f"{now:.6f}",
            "ttl_ms": str(ttl_ms),
        }
        expire_s = max(1, ttl_ms // 1000)
        async with self.waiter.client.pipeline(transaction=True) as pipe:
            pipe.hset(TASK_KEY + task_id, mapping=cast("Any", record))
            pipe.expire(TASK_KEY + task_id, expire_s)
            pipe.zadd(OWNER_KEY + owner, {task_id: now})
            pipe.zremrangebyscore(OWNER_KEY + owner, "-inf", now - self.ttl_s)
            pipe.expire(OWNER_KEY + owner, self.ttl_s)
            await pipe.execute()
        return self._wire(task_id, record, None)

    async def delete(self, task_id: str, owner: str) -> None:
        async with self.waiter.client.pipeline(transaction=True) as pipe:
            pipe.delete(TASK_KEY + task_id)
            pipe.zrem(OWNER_KEY + owner, task_id)
            await pipe.execute()

    async def get(self, task_id: str) -> dict[str, Any] | None:
        raw = await self.waiter.client.hgetall(TASK_KEY + task_id)
        if not raw:
            return None
        return {_s(k): _s(v) for k, v in raw.items()}

    async def mark_cancelled(self, task_id: str) -> None:
        await self.waiter.client.hset(
            TASK_KEY + task_id, mapping={"cancelled": "1", "updated": f"{time.time():.6f}"}
        )

    async def describe(self, task_id: str, record: dict[str, Any]) -> dict[str, Any]:
        return self._wire(task_id, record, await self.waiter.fetch(task_id))

    async def list(self, owner: str | None, cursor: str | None) -> dict[str, Any]:
        """One page of tasks, newest first: the owner's, or everyone's (owner None: auth off)."""
        offset = int(cursor) if cursor else 0
        if offset < 0:
            raise ValueError("negative cursor")
        client = self.waiter.client
        ids: list[str]
        if owner is not None:
            raw: list[Any] = await client.zrevrange(OWNER_KEY + owner, offset, offset + PAGE_SIZE - 1)
            ids = [_s(i) for i in raw]
        else:
            keys = [_s(k) async for k in client.scan_iter(match=OWNER_KEY + "*", count=500)]
            merged: list[tuple[float, str]] = []
            for key in keys:
                pairs: list[Any] = await client.zrange(key, 0, -1, withscores=True)
                merged.extend((float(score), _s(member)) for member, score in pairs)
            merged.sort(reverse=True)
            ids = [m for _, m in merged[offset : offset + PAGE_SIZE]]
        records = [await self.get(i) for i in ids]
        live = [(i, r) for i, r in zip(ids, records, strict=True) if r is not None]
        metas = await self.waiter.fetch_many([i for i, _ in live])
        tasks = [self._wire(i, r, m) for (i, r), m in zip(live, metas, strict=True)]
        out: dict[str, Any] = {"tasks": tasks}
        if len(ids) == PAGE_SIZE:
            out["nextCursor"] = str(offset + PAGE_SIZE)
        return out

    def _wire(self, task_id: str, record: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
        status = task_status(meta, record)
        created = float(record.get("created") or time.time())
        updated = _iso(float(record["updated"])) if record.get("updated") else _iso(created)
        done = (meta or {}).get("date_done")
        if done and status in TERMINAL and not record.get("updated"):
            updated = str(done) if str(done).endswith("Z") or "+" in str(done) else f"{done}Z"
        out: dict[str, Any] = {
            "taskId": task_id,
            "status": status,
            "createdAt": _iso(created),
            "lastUpdatedAt": updated,
            "ttl": int(record.get("ttl_ms") or self.ttl_s * 1000),
            "pollInterval": POLL_INTERVAL_MS,
        }
        message = _status_message(meta, status)
        if message:
            out["statusMessage"] = message
        return out


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
