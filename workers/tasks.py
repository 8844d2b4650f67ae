"""arq tasks: they call the same service layer as the API and the CLI."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from rag_service.instances import instance_config, list_instances
from rag_service.models import Job
from rag_service.runtime import Runtime
from workers.lock import instance_lock

log = logging.getLogger("ragd.worker")


async def sync_instance(
    ctx: dict[str, Any], instance_id: str, source: str = "user", job_id: str | None = None
) -> dict[str, Any]:
    """Sync one instance under its Redis lock; a second sync while one runs is skipped."""
    runtime: Runtime = ctx["runtime"]
    async with instance_lock(ctx["redis"], instance_id) as held:
        if not held:
            reason = f"a sync of instance {instance_id!r} is already running"
            log.info(reason)
            return {"job_id": job_id, "status": "skipped", "end_reason": reason, "counts": {}}
        result = await runtime.sync(instance_id, job_source=source, job_id=job_id)
    log.info("sync of %s %s: %s", instance_id, result.status, result.end_reason)
    return {
        "job_id": result.job_id,
        "status": result.status,
        "end_reason": result.end_reason,
        "counts": dict(result.counts),
        "seconds": round(result.seconds, 3),
    }


async def enqueue_due_syncs(ctx: dict[str, Any]) -> list[str]:
    """Cron: enqueue a scheduled sync of every instance whose interval has passed.

    The arq job id names the interval slot, so several workers enqueue each slot once."""
    runtime: Runtime = ctx["runtime"]
    now = time.time()
    enqueued: list[str] = []
    async with runtime.sessions() as session:
        rows = await list_instances(session)
        last = dict(
            (
                await session.execute(
                    select(Job.instance_id, func.max(Job.started_at)).group_by(Job.instance_id)
                )
            ).all()
        )
    for row in rows:
        interval = instance_config(row).sync_interval
        started: datetime | None = last.get(row.id)
        if (
            started is not None
            and now - started.replace(tzinfo=started.tzinfo or UTC).timestamp() < interval
        ):
            continue
        slot = int(now // interval)
        job = await ctx["redis"].enqueue_job(
            "sync_instance", row.id, "schedule", _job_id=f"ragd:schedule:{row.id}:{slot}"
        )
        if job is not None:
            enqueued.append(row.id)
    return enqueued
