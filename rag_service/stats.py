"""An instance's numbers: items by status, errors by file, index size, Workers AI usage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from rag_service import records
from rag_service.models import ITEM_STATUSES, Item, Job
from rag_service.providers.protocols import VectorIndex

ERRORS_SHOWN = 50


async def instance_stats(
    sessions: records.Sessions, instance_id: str, index: VectorIndex
) -> dict[str, Any]:
    """AI Search's stats: counts per item status, errors by file, vectors in the index."""
    async with sessions() as session:
        counts: dict[str, int] = dict.fromkeys(ITEM_STATUSES, 0)
        counts.update(await records.count_by_status(session, Item, instance_id))
        errors = await session.execute(
            select(Item.key, Item.error)
            .where(Item.instance_id == instance_id, Item.status == "error")
            .order_by(Item.key)
            .limit(ERRORS_SHOWN)
        )
        file_errors = {key: error or "" for key, error in errors.all()}
        usages = await session.scalars(select(Job.counts).where(Job.instance_id == instance_id))
        usage = sum_usage(counts.get("usage") or {} for counts in usages.all())
    return {
        **counts,
        "last_activity": await records.last_activity(sessions, instance_id),
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
