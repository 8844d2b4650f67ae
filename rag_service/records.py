"""Every query of instances, items, jobs and job log lines: what a sync records, and what the
API, the CLI and the worker read back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rag_service.errors import Conflict, NotFound
from rag_service.ingest.index import folder_of
from rag_service.instances import check_instance_id, validate_config
from rag_service.models import (
    FINAL_ITEM_STATUSES,
    Instance,
    Item,
    ItemStatus,
    Job,
    JobLog,
    JobStatus,
    Namespace,
    utcnow,
)
from rag_service.namespaces import DEFAULT_NAMESPACE, split_key
from rag_service.paging import count_and_page, page_of
from rag_service.providers.filters import NormFilter, matches
from rag_service.providers.protocols import ObjectInfo

ITEM_NAMESPACE = uuid.UUID("5b0a2f1e-7c1d-4e8a-9a3b-2f6d1c0e4b7a")
INFO, WARNING, ERROR = 0, 1, 2
_IN_BATCH = 500  # ids per IN (...) clause
INTERRUPTED = "interrupted: its process stopped"  # a job whose process died mid-sync

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
    task starts the same job again). A job cancelled before it started, or closed as
    interrupted by a sync that has run since (its work is done), comes back as it is: the
    caller must not run it."""
    now = utcnow()
    fields: dict[str, Any] = dict(instance_id=instance_id, source=source, status="running",
        description=description, started_at=now, last_seen_at=now, ended_at=None,
        end_reason=None, counts={})  # fmt: skip
    async with sessions() as session, session.begin():
        if job_id:  # one statement: a cancel cannot slip in between a read and this write
            await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status != "cancelled")
                .where(or_(Job.end_reason.is_(None), Job.end_reason != INTERRUPTED))
                .values(**fields)
            )
        job = await session.get(Job, job_id) if job_id else None
        if job is None:
            job = Job(id=job_id or str(uuid.uuid4()), **fields)
            session.add(job)
    return job


async def log_line(sessions: Sessions, job_id: str, message: str, level: int = INFO) -> None:
    async with sessions() as session, session.begin():
        session.add(JobLog(job_id=job_id, message=message, message_type=level))
        await session.execute(update(Job).where(Job.id == job_id).values(last_seen_at=utcnow()))


async def end_interrupted_jobs(
    sessions: Sessions, instance_id: str, resumed: str | None = None
) -> int:
    """Mark jobs still `running` as failed: called by the sync that now holds the instance's
    lock, so any other running job belongs to a process that died. The job that sync resumes
    (`resumed`: a dead worker's, taken over) stays running."""
    async with sessions() as session, session.begin():
        now = utcnow()
        done = await session.execute(
            update(Job)
            .where(Job.instance_id == instance_id, Job.status == "running", Job.id != resumed)
            .values(status="failed", end_reason=INTERRUPTED, ended_at=now)
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
    sessions: Sessions, job_id: str, status: JobStatus, end_reason: str, counts: dict[str, Any]
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
    return (await begin_items(sessions, instance_id, [(info, high_water)], job_id))[0]


async def _items_by_id(session: AsyncSession, ids: Sequence[str]) -> dict[str, Item]:
    found: dict[str, Item] = {}
    for part in range(0, len(ids), _IN_BATCH):
        rows = await session.scalars(select(Item).where(Item.id.in_(ids[part : part + _IN_BATCH])))
        found.update((item.id, item) for item in rows)
    return found


async def begin_items(
    sessions: Sessions, instance_id: str, started: Sequence[tuple[ObjectInfo, int]], job_id: str
) -> list[Item]:
    """`begin_item` for each (object, high-water mark), in one transaction."""
    ids = [item_id_for(instance_id, info.key) for info, _ in started]
    now = utcnow()
    async with sessions() as session, session.begin():
        found = await _items_by_id(session, ids)
        items = []
        for item_id, (info, high_water) in zip(ids, started, strict=True):
            item = found.get(item_id)
            if item is None:
                item = found[item_id] = Item(id=item_id, instance_id=instance_id, key=info.key)
                session.add(item)
            item.status = "running"
            item.error = None
            item.job_id = job_id
            item.chunk_high_water = max(item.chunk_high_water or 0, high_water)
            item.last_seen_at = now
            items.append(item)
    return items


@dataclass(frozen=True)
class ItemEnd:
    """An item's outcome, as `end_item` records it."""

    item_id: str
    info: ObjectInfo
    status: ItemStatus
    chunks_count: int = 0
    error: str | None = None
    metadata: dict[str, Any] | None = None
    retry: bool = False


async def end_item(
    sessions: Sessions,
    item_id: str,
    info: ObjectInfo,
    status: ItemStatus,
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
    end = ItemEnd(item_id, info, status, chunks_count, error, metadata, retry)
    await end_items(sessions, [end])


async def end_items(sessions: Sessions, ends: Sequence[ItemEnd]) -> None:
    """`end_item` for each outcome, in one transaction (rows deleted meanwhile are skipped)."""
    ids = [end.item_id for end in ends]
    now = utcnow()
    async with sessions() as session, session.begin():
        found = await _items_by_id(session, ids)
        for end in ends:
            item = found.get(end.item_id)
            if item is None:
                continue
            item.status = end.status
            item.error = end.error
            item.etag = "" if end.retry else end.info.etag
            item.size, item.last_modified = end.info.size, end.info.last_modified
            item.chunks_count = end.chunks_count
            if end.status == "completed":
                item.chunk_high_water = end.chunks_count  # leftovers past it were deleted
            item.metadata_ = end.metadata or {}
            item.last_seen_at = now


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


# Instances


async def get_instance(session: AsyncSession, instance_id: str) -> Instance:
    row = await session.get(Instance, instance_id)
    if row is None:
        namespace, name = split_key(instance_id)
        where = "" if namespace == DEFAULT_NAMESPACE else f" in namespace {namespace!r}"
        raise NotFound(f"instance {name!r} not found{where}")
    return row


async def list_instances(session: AsyncSession) -> Sequence[Instance]:
    return (await session.scalars(select(Instance).order_by(Instance.created_at))).all()


async def create_instance(
    session: AsyncSession, instance_id: str, source: str, config: dict[str, Any]
) -> Instance:
    """`instance_id` is the instance's key (rag_service.namespaces); its namespace must exist."""
    namespace, name = split_key(instance_id)
    check_instance_id(name)
    await get_namespace(session, namespace)
    if await session.get(Instance, instance_id) is not None:
        raise Conflict(f"instance {name!r} already exists in namespace {namespace!r}")
    cfg = validate_config(config)
    row = Instance(
        id=instance_id,
        namespace=namespace,
        name=name,
        source=source,
        config=cfg.model_dump(mode="json"),
    )
    session.add(row)
    await session.flush()
    return row


async def find_instances(
    sessions: Sessions, namespace: str | None, search: str | None, newest_first: bool
) -> list[Instance]:
    """The namespace's (None: every namespace's) instances by creation time, their names
    containing `search` if given."""
    order = Instance.created_at.desc() if newest_first else Instance.created_at
    query = select(Instance).order_by(order, Instance.id)
    if namespace is not None:
        query = query.where(Instance.namespace == namespace)
    if search:
        query = query.where(Instance.name.contains(search.lower(), autoescape=True))
    async with sessions() as session:
        return list((await session.scalars(query)).all())


async def get_namespace(session: AsyncSession, name: str) -> Namespace:
    row = await session.get(Namespace, name)
    if row is None:
        raise NotFound(f"namespace {name!r} not found")
    return row


async def find_namespaces(sessions: Sessions, search: str | None) -> list[Namespace]:
    """Namespaces, oldest first, their name or description containing `search` if given."""
    query = select(Namespace).order_by(Namespace.created_at, Namespace.name)
    if search:
        needle = search.lower()
        query = query.where(
            Namespace.name.contains(needle, autoescape=True)
            | func.lower(func.coalesce(Namespace.description, "")).contains(needle, autoescape=True)
        )
    async with sessions() as session:
        return list((await session.scalars(query)).all())


async def create_namespace(
    session: AsyncSession, name: str, description: str | None, limit: int
) -> Namespace:
    if await session.get(Namespace, name) is not None:
        raise Conflict(f"namespace {name!r} already exists")
    if (await session.scalar(select(func.count()).select_from(Namespace)) or 0) >= limit:
        raise Conflict(f"at most {limit} namespaces: delete one first")
    row = Namespace(name=name, description=description)
    session.add(row)
    await session.flush()
    return row


async def delete_namespace(session: AsyncSession, name: str) -> Namespace:
    """An empty namespace only."""
    row = await get_namespace(session, name)
    held = await session.scalar(
        select(func.count()).select_from(Instance).where(Instance.namespace == name)
    )
    if held:
        raise Conflict(f"namespace {name!r} holds {held} instance(s): delete them first")
    await session.delete(row)
    return row


async def has_indexed_items(session: AsyncSession, instance_id: str) -> bool:
    found = await session.scalar(
        select(Item.id).where(Item.instance_id == instance_id, Item.chunks_count > 0).limit(1)
    )
    return found is not None


async def mark_outdated(session: AsyncSession, instance_id: str) -> None:
    """Completed items must be indexed again (their chunking or metadata settings changed)."""
    completed = Item.instance_id == instance_id, Item.status == "completed"
    await session.execute(update(Item).where(*completed).values(status="outdated"))


# Reading back


async def list_jobs(
    sessions: Sessions, instance_id: str, page: int, per_page: int
) -> tuple[int, Sequence[Job]]:
    query = (
        select(Job)
        .where(Job.instance_id == instance_id)
        .order_by(Job.started_at.desc().nulls_first(), Job.id)
    )
    async with sessions() as session:
        return await count_and_page(session, query, page, per_page)


async def get_job(sessions: Sessions, instance_id: str, job_id: str) -> Job | None:
    async with sessions() as session:
        job = await session.get(Job, job_id)
    return job if job is not None and job.instance_id == instance_id else None


async def job_logs(
    sessions: Sessions, job_id: str, page: int, per_page: int
) -> tuple[int, Sequence[JobLog]]:
    query = select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)
    async with sessions() as session:
        return await count_and_page(session, query, page, per_page)


async def describe_job(sessions: Sessions, job_id: str, description: str | None) -> None:
    if description:
        async with sessions() as session, session.begin():
            await session.execute(
                update(Job).where(Job.id == job_id).values(description=description)
            )


async def has_synced(sessions: Sessions, instance_id: str) -> bool:
    async with sessions() as session:
        job = await session.scalar(select(Job.id).where(Job.instance_id == instance_id).limit(1))
        return job is not None


async def last_sync_started(sessions: Sessions) -> dict[str, datetime]:
    """When each instance's latest job started."""
    async with sessions() as session:
        rows = await session.execute(
            select(Job.instance_id, func.max(Job.started_at)).group_by(Job.instance_id)
        )
        return {instance_id: started for instance_id, started in rows.all() if started}


async def job_progress(sessions: Sessions, job_id: str, job: Job | None) -> tuple[int, int | None]:
    """(items done, items planned or None while the listing runs) of a sync job, whose row
    (None: not written yet) the caller has read."""
    async with sessions() as session:
        done = await session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status.in_(FINAL_ITEM_STATUSES))
        )
    planned = (
        None
        if job is None or "new" not in job.counts
        else job.counts["new"] + job.counts["changed"]
    )
    return int(done or 0), planned


async def item_problems(sessions: Sessions, job_id: str) -> list[tuple[str, str, str]]:
    """(status, key, reason) of the job's items that ended in error or skipped."""
    async with sessions() as session:
        rows = await session.execute(
            select(Item.status, Item.key, Item.error)
            .where(Item.job_id == job_id, Item.status.in_(("error", "skipped")))
            .order_by(Item.key)
        )
        return [(s, k, e or "") for s, k, e in rows.all()]


# AI Search's "status" order: work in progress and problems first.
STATUS_ORDER: dict[ItemStatus, int] = {
    "running": 0, "queued": 1, "error": 2, "outdated": 3, "skipped": 4, "completed": 5
}  # fmt: skip


def _items_query(
    instance_id: str,
    item_id: str | None,
    key: str | None,
    status: str | None,
    search: str | None,
    sort_by: str,
) -> Select[Item]:
    query = select(Item).where(Item.instance_id == instance_id)
    if item_id:
        query = query.where(Item.id == item_id)
    if key:
        query = query.where(Item.key == key)
    if status:
        query = query.where(Item.status == status)
    if search:
        query = query.where(Item.key.contains(search, autoescape=True))
    if sort_by == "modified_at":
        return query.order_by(Item.last_modified.desc(), Item.created_at.desc(), Item.key)
    return query.order_by(
        case(STATUS_ORDER, value=Item.status, else_=9), Item.last_seen_at, Item.key
    )


def item_attributes(item: Item) -> dict[str, object]:
    """What a metadata filter sees of an item: its custom metadata, folder and timestamp."""
    return {**item.metadata_, "folder": folder_of(item.key), "timestamp": int(item.last_modified)}


async def list_items(
    sessions: Sessions,
    instance_id: str,
    page: int,
    per_page: int,
    *,
    item_id: str | None = None,
    key: str | None = None,
    status: str | None = None,
    search: str | None = None,
    sort_by: str = "status",
    metadata_filter: NormFilter | None = None,
) -> tuple[int, list[Item]]:
    query = _items_query(instance_id, item_id, key, status, search, sort_by)
    async with sessions() as session:
        if metadata_filter is None:
            return await count_and_page(session, query, page, per_page)
        rows = [
            i
            for i in (await session.scalars(query)).all()
            if matches(item_attributes(i), metadata_filter)
        ]
    return len(rows), page_of(rows, page, per_page)


async def get_item(sessions: Sessions, instance_id: str, item_id: str) -> Item:
    async with sessions() as session:
        item = await session.get(Item, item_id)
    if item is None or item.instance_id != instance_id:
        raise NotFound(f"item {item_id!r} not found in instance {instance_id!r}")
    return item


async def count_by_status(
    session: AsyncSession, model: type[Item] | type[Job], instance_id: str
) -> dict[str, int]:
    """How many of an instance's items (or jobs) are in each status."""
    rows = await session.execute(
        select(model.status, func.count())
        .where(model.instance_id == instance_id)
        .group_by(model.status)
    )
    return {status: int(n) for status, n in rows.all()}


async def item_errors(sessions: Sessions, instance_id: str, limit: int) -> dict[str, str]:
    """The first `limit` items in error, by key, with their reasons."""
    async with sessions() as session:
        rows = await session.execute(
            select(Item.key, Item.error)
            .where(Item.instance_id == instance_id, Item.status == "error")
            .order_by(Item.key)
            .limit(limit)
        )
        return {key: error or "" for key, error in rows.all()}


async def job_counts(sessions: Sessions, instance_id: str) -> list[dict[str, Any]]:
    """Every job's counts (with its Workers AI usage under `usage`)."""
    async with sessions() as session:
        rows = await session.scalars(select(Job.counts).where(Job.instance_id == instance_id))
        return list(rows.all())


async def item_status_counts(sessions: Sessions) -> list[tuple[str, str, int]]:
    """(instance, status, items) over every instance."""
    async with sessions() as session:
        rows = await session.execute(
            select(Item.instance_id, Item.status, func.count()).group_by(
                Item.instance_id, Item.status
            )
        )
        return [(instance, status, int(n)) for instance, status, n in rows.all()]


async def last_activity(sessions: Sessions, instance_id: str) -> datetime | None:
    async with sessions() as session:
        job: datetime | None = await session.scalar(
            select(func.max(Job.last_seen_at)).where(Job.instance_id == instance_id)
        )
        item: datetime | None = await session.scalar(
            select(func.max(Item.updated_at)).where(Item.instance_id == instance_id)
        )
    return max((t for t in (job, item) if t is not None), default=None)


async def indexing_note(sessions: Sessions, instance_id: str) -> str | None:
    """Why a search may have found nothing: a sync is running, or none has ended yet."""
    async with sessions() as session:
        jobs = await count_by_status(session, Job, instance_id)
        items = await count_by_status(session, Item, instance_id)
    if jobs.get("running"):
        waiting = items.get("queued", 0) + items.get("running", 0)
        done = sum(items.values()) - waiting
        return (
            f"a sync of this instance is running ({done} of {done + waiting} items done): "
            "results may be incomplete until it ends"
        )
    if not jobs.get("completed"):
        return (
            "this instance has not completed a sync yet, so little or nothing is indexed: "
            "start one with POST .../jobs or `ragd sync`"
        )
    return None


# Item logs


async def add_log_lines(sessions: Sessions, job_id: str, lines: Sequence[JobLog]) -> None:
    """Store many log lines of a job in one transaction (a sync's item events)."""
    if not lines:
        return
    async with sessions() as session, session.begin():
        session.add_all(lines)
        await session.execute(update(Job).where(Job.id == job_id).values(last_seen_at=utcnow()))


async def item_logs(
    sessions: Sessions, item_id: str, after: int | None, limit: int
) -> tuple[list[JobLog], bool]:
    """Up to `limit` log lines of an item, oldest first, past the line `after`; and whether
    more follow."""
    query = select(JobLog).where(JobLog.item_id == item_id).order_by(JobLog.id).limit(limit + 1)
    if after is not None:
        query = query.where(JobLog.id > after)
    async with sessions() as session:
        rows = list((await session.scalars(query)).all())
    return rows[:limit], len(rows) > limit


# Job control: queued rows, cancellation, the sync cooldown

CANCEL_REQUESTED = "cancel requested: the sync stops at the next item boundary"


async def queue_job(
    sessions: Sessions, instance_id: str, job_id: str, source: str, description: str | None
) -> None:
    """A `queued` row for a sync handed to the worker, so that it can be read, counted and
    cancelled before it starts (`last_seen_at`: when it was queued)."""
    async with sessions() as session, session.begin():
        session.add(Job(id=job_id, instance_id=instance_id, source=source, status="queued",
                        description=description, last_seen_at=utcnow()))  # fmt: skip


async def end_queued_job(sessions: Sessions, job_id: str, status: JobStatus, reason: str) -> bool:
    """End a job that has not started (its row is still `queued`); False if it has."""
    now = utcnow()
    async with sessions() as session, session.begin():
        done = await session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status=status, end_reason=reason, ended_at=now, last_seen_at=now)
        )
    return bool(getattr(done, "rowcount", 0))


async def request_cancel(sessions: Sessions, job_id: str) -> None:
    """A queued job ends `cancelled` now; a running one is marked (its `end_reason` says so
    until it ends) for its sync loop, which stops at the next item boundary."""
    if await end_queued_job(sessions, job_id, "cancelled", "cancelled before it started"):
        return
    async with sessions() as session, session.begin():
        await session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(end_reason=CANCEL_REQUESTED)
        )


async def cancel_requested(sessions: Sessions, job_id: str) -> bool:
    """Whether the running job was asked to stop."""
    async with sessions() as session:
        reason = await session.scalar(
            select(Job.end_reason).where(Job.id == job_id, Job.status == "running")
        )
    return reason == CANCEL_REQUESTED


async def restore_items(sessions: Sessions, job_id: str, before: dict[str, Item]) -> int:
    """After a cancelled sync: its items left queued or begun (nothing of them written) get
    back the status they had `before` it; those it added lose their row. Returns how many."""
    async with sessions() as session, session.begin():
        rows = (
            await session.scalars(
                select(Item).where(Item.job_id == job_id, Item.status.in_(("queued", "running")))
            )
        ).all()
        for item in rows:
            old = before.get(item.id)
            if old is None:
                await session.delete(item)
            else:
                item.status, item.error, item.job_id = old.status, old.error, old.job_id
    return len(rows)


async def open_jobs(sessions: Sessions, instance_id: str) -> list[Job]:
    """The instance's jobs that have not ended (queued or running)."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Job).where(Job.instance_id == instance_id, Job.status.in_(("queued", "running")))
        )
        return list(rows.all())


async def last_sync_start(sessions: Sessions, instance_id: str, since: datetime) -> datetime | None:
    """When the instance's latest sync started, if at or after `since`: a job that listed its
    source (counts `listed`) or one still running, not a one-item job that has ended."""
    async with sessions() as session:
        rows = await session.execute(
            select(Job.started_at, Job.status, Job.counts).where(
                Job.instance_id == instance_id, Job.started_at >= since
            )
        )
        found = rows.all()
    starts = [t for t, status, counts in found if status == "running" or "listed" in counts]
    return max(starts, default=None)
