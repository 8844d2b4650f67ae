"""An instance's numbers: items by status, errors by file, index size, Workers AI usage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rag_service import records
from rag_service.instances import instance_config
from rag_service.models import ITEM_STATUSES, Item
from rag_service.providers.protocols import VectorIndex

ERRORS_SHOWN = 50


async def instance_stats(
    sessions: records.Sessions, instance_id: str, index: VectorIndex
) -> dict[str, Any]:
    """AI Search's stats: counts per item status, errors by file, vectors in the index."""
    counts: dict[str, int] = dict.fromkeys(ITEM_STATUSES, 0)
    async with sessions() as session:
        counts.update(await records.count_by_status(session, Item, instance_id))
        paused = instance_config(await records.get_instance(session, instance_id)).paused
    jobs = await records.job_counts(sessions, instance_id)
    return {
        **counts,
        "paused": paused,  # no scheduled syncs
        "last_activity": await records.last_activity(sessions, instance_id),
        "file_embed_errors": await records.item_errors(sessions, instance_id, ERRORS_SHOWN),
        "index_source_errors": {},
        "usage": sum_usage(job.get("usage") or {} for job in jobs),
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
