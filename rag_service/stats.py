"""An instance's numbers: items by status, last activity, index size."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rag_service.models import Item, Job
from rag_service.runtime import Runtime

STATUSES = ("queued", "running", "completed", "error", "skipped", "outdated")
ERRORS_SHOWN = 50


async def last_activity(runtime: Runtime, instance_id: str) -> datetime | None:
    async with runtime.sessions() as session:
        job: datetime | None = await session.scalar(
            select(func.max(Job.last_seen_at)).where(Job.instance_id == instance_id)
        )
        item: datetime | None = await session.scalar(
            select(func.max(Item.updated_at)).where(Item.instance_id == instance_id)
        )
    return max((t for t in (job, item) if t is not None), default=None)


async def instance_stats(runtime: Runtime, instance_id: str) -> dict[str, Any]:
    """AI Search's stats: counts per item status, errors by file, vectors in the index."""
    _, cfg = await runtime.get_instance(instance_id)
    async with runtime.sessions() as session:
        counts = {status: 0 for status in STATUSES}
        counts.update(await _by_status(session, Item, instance_id))
        errors = await session.execute(
            select(Item.key, Item.error)
            .where(Item.instance_id == instance_id, Item.status == "error")
            .order_by(Item.key)
            .limit(ERRORS_SHOWN)
        )
        file_errors = {key: error or "" for key, error in errors.all()}
        usages = await session.scalars(select(Job.counts).where(Job.instance_id == instance_id))
        usage = sum_usage(counts.get("usage") or {} for counts in usages.all())
    index = await runtime.index(instance_id, cfg)
    return {
        **counts,
        "last_activity": (await last_activity(runtime, instance_id) or None),
        "file_embed_errors": file_errors,
        "index_source_errors": {},
        "usage": usage,
        "engine": {
            "vectorize": {"dimensions": index.spec.dimensions, "vectorsCount": await index.count()}
        },
    }


def sum_usage(usages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Workers AI usage of all of an instance's jobs: calls, tokens, estimated neurons and USD."""
    keys = ("calls", "input_tokens", "output_tokens", "neurons", "usd")
    total: dict[str, Any] = dict.fromkeys(keys, 0)
    for usage in usages:
        for key in keys:
            total[key] += usage.get(key, 0)
    total["neurons"], total["usd"] = round(total["neurons"], 3), round(total["usd"], 9)
    return total


async def _by_status(
    session: AsyncSession, model: type[Item] | type[Job], instance_id: str
) -> dict[str, int]:
    """How many of an instance's items (or jobs) are in each status."""
    rows = await session.execute(
        select(model.status, func.count())
        .where(model.instance_id == instance_id)
        .group_by(model.status)
    )
    return {status: int(n) for status, n in rows.all()}


async def indexing_note(runtime: Runtime, instance_id: str) -> str | None:
    """Why a search may have found nothing: a sync is running, or none has ended yet."""
    async with runtime.sessions() as session:
        jobs = await _by_status(session, Job, instance_id)
        items = await _by_status(session, Item, instance_id)
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
