"""Stage 8: record items, jobs and job log lines in the metadata database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rag_service.models import Item, Job, JobLog, utcnow
from rag_service.providers.protocols import ObjectInfo

ITEM_NAMESPACE = uuid.UUID("5b0a2f1e-7c1d-4e8a-9a3b-2f6d1c0e4b7a")
INFO, WARNING, ERROR = 0, 1, 2
_IN_BATCH = 500  # ids per IN (...) clause

Sessions = async_sessionmaker[AsyncSession]


def item_id_for(instance_id: str, key: str) -> str:
    """Deterministic, so a crashed run's chunk ids are found again by the next one."""
    return str(uuid.uuid5(ITEM_NAMESPACE, f"{instance_id}\0{key}"))


async def load_items(sessions: Sessions, instance_id: str) -> list[Item]:
    async with sessions() as session:
        rows = await session.scalars(select(Item).where(Item.instance_id == instance_id))
        return list(rows.all())


async def find_item(sessions: Sessions, instance_id: str, key: str) -> Item | None:
    async with sessions() as session:
        return await session.get(Item, item_id_for(instance_id, key))


async def start_job(
    sessions: Sessions,
    instance_id: str,
    source: str,
    description: str | None = None,
    job_id: str | None = None,
) -> Job:
    """A running job row; `job_id` lets a caller that enqueued the sync follow it (a retried
    task starts the same job again)."""
    now = utcnow()
    fields: dict[str, Any] = dict(instance_id=instance_id, source=source, status="running",
        description=description, started_at=now, last_seen_at=now, ended_at=None,
        end_reason=None, counts={})  # fmt: skip
    async with sessions() as session, session.begin():
        job = await session.get(Job, job_id) if job_id else None
        if job is None:
            job = Job(id=job_id or str(uuid.uuid4()), **fields)
            session.add(job)
        else:
            for name, value in fields.items():
                setattr(job, name, value)
    return job


async def log_line(sessions: Sessions, job_id: str, message: str, level: int = INFO) -> None:
    async with sessions() as session, session.begin():
        session.add(JobLog(job_id=job_id, message=message, message_type=level))
        await session.execute(update(Job).where(Job.id == job_id).values(last_seen_at=utcnow()))


async def end_interrupted_jobs(sessions: Sessions, instance_id: str) -> int:
    """Mark jobs still `running` as failed: called by the sync that now holds the instance's
    lock, so any other running job belongs to a process that died."""
    async with sessions() as session, session.begin():
        now = utcnow()
        done = await session.execute(
            update(Job)
            .where(Job.instance_id == instance_id, Job.status == "running")
            .values(status="failed", end_reason="interrupted: its process stopped", ended_at=now)
        )
        return int(getattr(done, "rowcount", 0) or 0)


async def set_job_counts(sessions: Sessions, job_id: str, counts: dict[str, Any]) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job_id).values(counts=counts, last_seen_at=utcnow())
        )


async def set_job_usage(sessions: Sessions, job_id: str, usage: dict[str, Any]) -> None:
    """Keep a job's model usage beside its counts (`counts["usage"]`)."""
    async with sessions() as session, session.begin():
        job = await session.get(Job, job_id)
        if job is not None:
            job.counts = {**job.counts, "usage": usage}


async def finish_job(
    sessions: Sessions, job_id: str, status: str, end_reason: str, counts: dict[str, Any]
) -> None:
    async with sessions() as session, session.begin():
        now = utcnow()
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status, end_reason=end_reason, ended_at=now, last_seen_at=now, counts=counts
            )
        )


async def begin_item(
    sessions: Sessions, instance_id: str, info: ObjectInfo, job_id: str, high_water: int
) -> Item:
    """Create or update the item row as `running`, with the chunk high-water mark set first."""
    item_id = item_id_for(instance_id, info.key)
    async with sessions() as session, session.begin():
        item = await session.get(Item, item_id)
        if item is None:
            item = Item(id=item_id, instance_id=instance_id, key=info.key)
            session.add(item)
        item.status = "running"
        item.error = None
        item.job_id = job_id
        item.chunk_high_water = max(item.chunk_high_water or 0, high_water)
        item.last_seen_at = utcnow()
    return item


async def end_item(
    sessions: Sessions,
    item_id: str,
    info: ObjectInfo,
    status: str,
    *,
    chunks_count: int = 0,
    error: str | None = None,
    metadata: dict[str, Any] | None = None,
    retry: bool = False,
) -> None:
    """Record the outcome; the etag is stored only now, so an interrupted item is redone.

    `retry` leaves the etag blank so that the next sync tries the item again (a backend
    failure, as opposed to a document that cannot be read).
    """
    async with sessions() as session, session.begin():
        item = await session.get(Item, item_id)
        if item is None:
            return
        item.status = status
        item.error = error
        item.etag = "" if retry else info.etag
        item.size, item.last_modified = info.size, info.last_modified
        item.chunks_count = chunks_count
        if status == "completed":
            item.chunk_high_water = chunks_count  # leftovers past it were deleted
        item.metadata_ = metadata or {}
        item.last_seen_at = utcnow()


async def touch_items(sessions: Sessions, item_ids: Sequence[str], seen: datetime) -> None:
    if not item_ids:
        return
    async with sessions() as session, session.begin():
        await session.execute(update(Item).where(Item.id.in_(item_ids)).values(last_seen_at=seen))


async def delete_item(sessions: Sessions, item_id: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(delete(Item).where(Item.id == item_id))


async def queue_items(
    sessions: Sessions, instance_id: str, infos: Sequence[ObjectInfo], job_id: str
) -> None:
    """Mark the items a sync is about to index as `queued` (new ones get a row, etag blank)."""
    for start in range(0, len(infos), _IN_BATCH):
        ids = [item_id_for(instance_id, info.key) for info in infos[start : start + _IN_BATCH]]
        async with sessions() as session, session.begin():
            existing = set((await session.scalars(select(Item.id).where(Item.id.in_(ids)))).all())
            for item_id, info in zip(ids, infos[start : start + _IN_BATCH], strict=True):
                if item_id not in existing:
                    session.add(Item(id=item_id, instance_id=instance_id, key=info.key))
            await session.flush()
            await session.execute(
                update(Item)
                .where(Item.id.in_(ids))
                .values(status="queued", error=None, job_id=job_id, last_seen_at=utcnow())
            )
