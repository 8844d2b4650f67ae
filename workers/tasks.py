"""arq tasks: each takes the instance's Redis lock, then runs the same operation as `ragd up`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from arq import Retry

from rag_service import records
from rag_service.errors import RagError
from rag_service.instances import instance_config
from rag_service.queue import SYNC_TASK, instance_lock, schedule_job_id
from rag_service.runtime import Runtime

log = logging.getLogger("ragd.worker")

MAX_TRIES = 3
JOB_TIMEOUT_S = 6 * 3600
# A user's sync waits for the instance's lock: for a running sync to end (a scheduled one, say,
# started by a new worker for a new instance) and for the lock of a worker killed mid-sync to
# expire (<= LOCK_TTL_MS), so that `ragd sync` always ends with a sync run after it was asked.
USER_LOCK_WAIT_S = JOB_TIMEOUT_S / 2


def _lock_wait(source: str) -> float:
    return USER_LOCK_WAIT_S if source == "user" else 0.0


def _retry_later(ctx: dict[str, Any], what: str, reason: str) -> None:
    """Raise arq's Retry with a growing delay while tries remain (transient failures only)."""
    tries = int(ctx.get("job_try", 1))
    if tries < MAX_TRIES:
        log.warning("%s failed for a passing reason (%s); try %d of %d", what, reason, tries,
                    MAX_TRIES)  # fmt: skip
        raise Retry(defer=10 * 2 ** (tries - 1))


def _skipped(job_id: str | None, reason: str) -> dict[str, Any]:
    log.info(reason)
    return {"job_id": job_id, "status": "skipped", "end_reason": reason, "counts": {}}


def _busy(instance_id: str, job_id: str | None) -> dict[str, Any]:
    return _skipped(job_id, f"a sync of instance {instance_id!r} is already running")


async def _paused(runtime: Runtime, instance_id: str) -> bool:
    _, cfg = await runtime.instances.get(instance_id)
    return cfg.paused


async def sync_instance(
    ctx: dict[str, Any],
    instance_id: str,
    source: str = "user",
    job_id: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Sync one instance under its Redis lock (list, diff, then index new and changed items in
    windows, delete vanished ones); a second sync while one runs is skipped (its queued job
    row ends as failed, saying so), and so is a scheduled sync of a paused instance."""
    runtime: Runtime = ctx["runtime"]
    if source == "schedule" and await _paused(runtime, instance_id):
        return _skipped(job_id, f"instance {instance_id!r} is paused: no scheduled sync")
    async with instance_lock(ctx["redis"], instance_id, _lock_wait(source)) as held:
        if not held:
            if job_id is not None:
                reason = f"skipped: a sync of instance {instance_id!r} was already running"
                await records.end_queued_job(runtime.sessions, job_id, "failed", reason)
            return _busy(instance_id, job_id)
        result = await runtime.sync(
            instance_id, job_source=source, job_id=job_id, description=description
        )
    log.info("sync of %s %s: %s", instance_id, result.status, result.end_reason)
    if result.status == "failed" and result.transient:
        _retry_later(ctx, f"sync of {instance_id}", result.end_reason)
    return {
        "job_id": result.job_id,
        "status": result.status,
        "end_reason": result.end_reason,
        "counts": dict(result.counts),
        "seconds": round(result.seconds, 3),
    }


async def index_item(
    ctx: dict[str, Any], instance_id: str, key: str, source: str = "user"
) -> dict[str, Any]:
    """(Re)index one object of an instance, e.g. after an upload or an item sync request."""
    runtime: Runtime = ctx["runtime"]
    async with instance_lock(ctx["redis"], instance_id, _lock_wait(source)) as held:
        if not held:
            return _busy(instance_id, None)
        try:
            outcome = await runtime.index_item(instance_id, key, job_source=source)
        except RagError as exc:
            if exc.transient:
                _retry_later(ctx, f"indexing {key}", exc.message)
            return {"key": key, "status": "error", "detail": exc.message}
    if outcome.status == "error" and outcome.retry:
        _retry_later(ctx, f"indexing {key}", outcome.detail)
    return {"key": key, "status": outcome.status, "detail": outcome.detail}


async def delete_item(ctx: dict[str, Any], instance_id: str, key: str) -> dict[str, Any]:
    """Drop one item's chunks and row."""
    runtime: Runtime = ctx["runtime"]
    async with instance_lock(ctx["redis"], instance_id, USER_LOCK_WAIT_S) as held:
        if not held:
            return _busy(instance_id, None)
        try:
            deleted = await runtime.delete_item(instance_id, key)
        except RagError as exc:
            if exc.transient:
                _retry_later(ctx, f"deleting {key}", exc.message)
            raise
    return {"key": key, "status": "deleted" if deleted else "unknown"}


async def enqueue_due_syncs(ctx: dict[str, Any]) -> list[str]:
    """Cron: enqueue a scheduled sync of every instance whose interval has passed, but for
    paused ones.

    The arq job id names the interval slot, so several workers enqueue each slot once."""
    runtime: Runtime = ctx["runtime"]
    now = time.time()
    enqueued: list[str] = []
    async with runtime.sessions() as session:
        rows = await records.list_instances(session)
    last = await records.last_sync_started(runtime.sessions)
    for row in rows:
        cfg = instance_config(row)
        interval = cfg.sync_interval
        started: datetime | None = last.get(row.id)
        if cfg.paused or (
            started is not None
            and now - started.replace(tzinfo=started.tzinfo or UTC).timestamp() < interval
        ):
            continue
        slot = int(now // interval)
        job = await ctx["redis"].enqueue_job(
            SYNC_TASK, row.id, "schedule", _job_id=schedule_job_id(row.id, slot)
        )
        if job is not None:
            enqueued.append(row.id)
    return enqueued
