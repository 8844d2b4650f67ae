"""Enqueue a sync for the worker and follow it to its end (what `ragd sync` does by default)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus
from sqlalchemy import func, select

from rag_service.errors import BackendError, RagError
from rag_service.jobs import arq_job_id, queue_pool
from rag_service.models import Item, Job
from rag_service.runtime import Runtime
from workers.worker import HEALTH_CHECK_SECONDS, health_check_key

FINAL = ("completed", "error", "skipped")
WORKER_START_WAIT_S = 5.0
Progress = Callable[[int, int | None], None]  # (items done, items planned or None)


async def enqueue_sync(runtime: Runtime, instance_id: str, progress: Progress) -> dict[str, Any]:
    """Queue `sync_instance` and wait for its result, reporting item progress from the database."""
    async with queue_pool(runtime.settings) as pool:
        if not await _worker_alive(pool, WORKER_START_WAIT_S):
            raise RagError("no worker is running: start `ragd worker`, or sync here with --inline")
        job_id = str(uuid.uuid4())
        queued = await pool.enqueue_job(
            "sync_instance", instance_id, "user", job_id, _job_id=arq_job_id(job_id)
        )
        assert queued is not None  # a fresh uuid cannot collide
        return await _follow(runtime, pool, queued, job_id, progress)


async def _worker_alive(pool: ArqRedis, wait: float) -> bool:
    """True once a worker's heartbeat is seen within `wait` seconds (one may be starting)."""
    deadline = time.monotonic() + wait
    while not await pool.exists(health_check_key()):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def _follow(
    runtime: Runtime, pool: ArqRedis, queued: ArqJob, job_id: str, progress: Progress
) -> dict[str, Any]:
    heard = time.monotonic()
    while await queued.status() != JobStatus.complete:
        progress(*await _item_progress(runtime, job_id))
        if await pool.exists(health_check_key()):
            heard = time.monotonic()
        elif time.monotonic() - heard > 2 * HEALTH_CHECK_SECONDS:
            raise BackendError(
                "the worker stopped during the sync: start `ragd worker` again and rerun "
                "`ragd sync` (it carries on from the items already indexed)"
            )
        await asyncio.sleep(0.5)
    info = await queued.result_info()
    if info is None or not info.success:
        raise BackendError(f"the worker failed the sync: {info.result if info else 'no result'}")
    result: dict[str, Any] = info.result
    return result


async def _item_progress(runtime: Runtime, job_id: str) -> tuple[int, int | None]:
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
        done = await session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status.in_(FINAL))
        )
    planned = (
        None
        if job is None or "new" not in job.counts
        else job.counts["new"] + job.counts["changed"]
    )
    return int(done or 0), planned


async def item_problems(runtime: Runtime, job_id: str) -> list[tuple[str, str, str]]:
    """(status, key, reason) of the job's items that ended in error or skipped."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Item.status, Item.key, Item.error)
            .where(Item.job_id == job_id, Item.status.in_(("error", "skipped")))
            .order_by(Item.key)
        )
        return [(s, k, e or "") for s, k, e in rows.all()]
