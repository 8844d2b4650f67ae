"""A whole sync of one instance: list -> diff -> index new and changed items a window at a
time, delete vanished ones -> record the job."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rag_service import records
from rag_service.errors import RagError
from rag_service.ingest.diff import plan_sync
from rag_service.ingest.items import (
    PREPARE_GROUP,
    Outcome,
    Prepared,
    SyncContext,
    delete_item,
    finish_window,
    index_window,
    prepare_window,
)
from rag_service.ingest.list import list_source
from rag_service.ingest.retry import retry_transient
from rag_service.models import Item, JobStatus, utcnow
from rag_service.providers.protocols import ObjectInfo
from rag_service.providers.usage import UsageMeter
from rag_service.retrieve.cache import AnswerCache

SETTLE_TIMEOUT_S = 120.0
CRASH_RECORD_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # ~30 s to record why a sync crashed

__all__ = ["SyncContext", "SyncProgress", "SyncResult", "delete_one", "index_one", "run_sync"]


@dataclass
class SyncResult:
    job_id: str
    status: JobStatus  # completed | failed | cancelled
    end_reason: str
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    transient: bool = False  # failed for a passing reason: worth running again later
    usage: dict[str, Any] = field(default_factory=dict)  # Workers AI calls, tokens, neurons


SyncProgress = Callable[[str, ObjectInfo | Item, str], None]


async def run_sync(
    ctx: SyncContext,
    job_source: str = "user",
    progress: SyncProgress | None = None,
    job_id: str | None = None,
    description: str | None = None,
) -> SyncResult:
    """Sync an instance's index with its source; one item's failure never stops the job.
    Workers AI calls made for it are recorded with the job (tokens, estimated neurons)."""
    meter = UsageMeter()
    with meter.attach():
        result = await _run_sync(ctx, job_source, progress, job_id, description)
    result.usage = await record_usage(ctx, result.job_id, meter)
    return result


async def record_usage(ctx: SyncContext, job_id: str, meter: UsageMeter) -> dict[str, Any]:
    """Keep the Workers AI calls `meter` counted with the job, and say so in its log."""
    usage = meter.snapshot()
    if not usage["calls"]:
        return {}
    await records.set_job_usage(ctx.sessions, job_id, usage)
    await records.log_line(
        ctx.sessions,
        job_id,
        f"Workers AI: {usage['calls']} call{'s' * (usage['calls'] != 1)}, "
        f"{usage['input_tokens']} tokens in, "
        f"{usage['output_tokens']} out, about {usage['neurons']} neurons (${usage['usd']:.4f})",
    )
    return usage


class SyncCancelled(Exception):
    """The job was cancelled: raised at an item boundary, caught by `run_sync`."""


async def _run_sync(
    ctx: SyncContext,
    job_source: str,
    progress: SyncProgress | None,
    job_id: str | None,
    description: str | None,
) -> SyncResult:
    started = time.perf_counter()
    await records.end_interrupted_jobs(ctx.sessions, ctx.instance_id, resumed=job_id)
    job = await records.start_job(
        ctx.sessions, ctx.instance_id, job_source, description, job_id=job_id
    )
    if job.status != "running":  # cancelled before it started, or done by a later sync
        ended: JobStatus = "cancelled" if job.status == "cancelled" else "failed"
        return SyncResult(job.id, ended, job.end_reason or ended)
    counts: Counter[str] = Counter()
    try:
        cancelled = await _sync_items(ctx, job.id, counts, progress)
    except RagError as exc:
        reason = f"sync failed: {exc.message}"
        await records.log_line(ctx.sessions, job.id, reason, records.ERROR)
        await records.finish_job(ctx.sessions, job.id, "failed", reason, dict(counts))
        seconds = time.perf_counter() - started
        return SyncResult(job.id, "failed", reason, counts, seconds, exc.transient)
    except BaseException as exc:
        await finish_after_crash(ctx, job.id, exc, dict(counts))
        raise
    reason = (
        f"{counts['completed']} indexed, {counts['error']} errors, {counts['skipped']} skipped, "
        f"{counts['unchanged']} unchanged, {counts['deleted']} deleted"
    )
    status: JobStatus = "cancelled" if cancelled else "completed"
    if cancelled:
        reason = f"cancelled at an item boundary: {reason}; the items not reached are unchanged"
    await records.log_line(ctx.sessions, job.id, reason if cancelled else f"done: {reason}")
    await records.finish_job(ctx.sessions, job.id, status, reason, dict(counts))
    return SyncResult(job.id, status, reason, counts, time.perf_counter() - started)


async def _sync_items(
    ctx: SyncContext, job_id: str, counts: Counter[str], progress: SyncProgress | None
) -> bool:
    """List, diff, delete vanished items and index new and changed ones, counting in
    `counts`. True when the job was cancelled: it stopped at an item boundary, and the items
    it had not reached are back as they were."""
    listing = await retry_transient(lambda: list_source(ctx.source), what="listing")
    items = await records.load_items(ctx.sessions, ctx.instance_id)
    plan = plan_sync(listing, items)
    counts.update(
        listed=len(listing),
        new=len(plan.new),
        changed=len(plan.changed),
        unchanged=len(plan.unchanged),
        deleted=len(plan.deleted),
    )
    await records.set_job_counts(ctx.sessions, job_id, dict(counts))
    await records.log_line(
        ctx.sessions,
        job_id,
        f"listed {len(listing)} objects: {len(plan.new)} new, {len(plan.changed)} changed, "
        f"{len(plan.unchanged)} unchanged, {len(plan.deleted)} deleted",
    )
    changed: list[str] = []
    by_key = {item.key: item for item in items}
    await records.touch_items(ctx.sessions, [by_key[i.key].id for i in plan.unchanged], utcnow())
    await records.queue_items(ctx.sessions, ctx.instance_id, plan.to_index, job_id)

    def done(outcome: Outcome) -> None:
        changed.append(records.item_id_for(ctx.instance_id, outcome.info.key))
        counts[outcome.status] += 1
        counts["chunks"] += outcome.chunks
        if progress:
            progress(outcome.status, outcome.info, outcome.detail)

    try:
        await delete_vanished(ctx, plan.deleted, job_id, changed, progress)
        await index_all(ctx, plan.to_index, job_id, done)
        cancelled = False
    except SyncCancelled:
        await records.restore_items(ctx.sessions, job_id, {item.id: item for item in items})
        cancelled = True
    await settle_index(ctx, job_id)
    await drop_cached_answers(ctx, changed)
    return cancelled


async def stop_if_cancelled(ctx: SyncContext, job_id: str) -> None:
    """Raise SyncCancelled when the job's cancellation was asked for (an item boundary)."""
    if await records.cancel_requested(ctx.sessions, job_id):
        raise SyncCancelled


async def delete_vanished(
    ctx: SyncContext,
    vanished: list[Item],
    job_id: str,
    changed: list[str],
    progress: SyncProgress | None,
) -> None:
    """Drop the items gone from the source, one at a time (each noted in `changed`)."""
    for item in vanished:
        await stop_if_cancelled(ctx, job_id)
        changed.append(item.id)
        await delete_item(ctx, item)
        if progress:
            progress("deleted", item, "")


async def finish_after_crash(
    ctx: SyncContext, job_id: str, exc: BaseException, counts: dict[str, Any]
) -> None:
    """Close a job that an unexpected error (a lost database connection, say) or a
    cancellation ended, with a reason; the database may be the thing that failed, so keep
    trying for a while (the next sync marks a job left running as interrupted anyway)."""
    cancelled = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit)
    reason = "sync stopped" if cancelled else f"sync crashed: {type(exc).__name__}: {exc}"[:500]
    for delay in CRASH_RECORD_DELAYS_S:
        try:
            await records.finish_job(ctx.sessions, job_id, "failed", reason, counts)
            return
        except Exception:  # most likely the database itself: wait and try again
            if cancelled:
                return
            await asyncio.sleep(delay)


async def drop_cached_answers(ctx: SyncContext, item_ids: list[str]) -> None:
    """Cached answers grounded on re-indexed or deleted items must not be served again."""
    if item_ids:
        await AnswerCache(ctx.sessions, ctx.instance_id).invalidate_items(item_ids)


async def settle_index(ctx: SyncContext, job_id: str) -> bool:
    """Wait for an eventually consistent index (Vectorize) to apply this job's writes, and say
    in the job's log whether it did."""
    settle = getattr(ctx.index, "settle", None)
    if settle is None:
        return True
    caught_up = bool(await settle(SETTLE_TIMEOUT_S))
    if caught_up:
        await records.log_line(ctx.sessions, job_id, "the index has applied every write")
    else:
        await records.log_line(
            ctx.sessions,
            job_id,
            f"the index had not applied every write after {SETTLE_TIMEOUT_S:.0f} s: searches "
            "may miss the newest changes for a while",
            records.WARNING,
        )
    return caught_up


async def index_all(
    ctx: SyncContext, infos: list[ObjectInfo], job_id: str, done: Callable[[Outcome], None]
) -> None:
    """Index `infos`: prepare groups of items until a window holds `ctx.window_chunks` chunks,
    then embed and write it. With remote models the next group is prepared meanwhile. A
    cancelled job stops after each group prepared (SyncCancelled), before writing more."""
    groups = [infos[i : i + PREPARE_GROUP] for i in range(0, len(infos), PREPARE_GROUP)]
    if not groups:
        return
    pending: asyncio.Future[Prepared] = asyncio.ensure_future(
        prepare_window(ctx, groups[0], job_id)
    )
    window = Prepared()
    try:
        await stop_if_cancelled(ctx, job_id)
        for n in range(len(groups)):
            window.add(await pending)
            if await records.cancel_requested(ctx.sessions, job_id):
                for outcome in window.done:  # unreadable items, recorded already
                    done(outcome)
                raise SyncCancelled  # the window's other items are not written
            following = groups[n + 1] if n + 1 < len(groups) else None
            full = following is None or window.chunks >= ctx.window_chunks
            if following is not None and (ctx.overlap_stages or not full):
                pending = asyncio.ensure_future(prepare_window(ctx, following, job_id))
            if not full:
                continue
            for outcome in await finish_window(ctx, window, job_id):
                done(outcome)
            window = Prepared()
            if following is not None and not ctx.overlap_stages:
                pending = asyncio.ensure_future(prepare_window(ctx, following, job_id))
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


async def index_one(ctx: SyncContext, key: str, job_source: str = "user") -> Outcome:
    """Index one object, recorded as a job of its own; an object gone from the source has its
    item deleted."""
    job = await records.start_job(
        ctx.sessions, ctx.instance_id, job_source, description=f"sync of {key}"
    )
    meter = UsageMeter()
    try:
        with meter.attach():
            info = await retry_transient(lambda: ctx.source.stat(key), what=f"reading {key}")
            if info is None:
                await delete_one(ctx, key)
                outcome = Outcome(ObjectInfo(key, "", 0, 0.0), "deleted", "gone from the source")
            else:
                await records.queue_items(ctx.sessions, ctx.instance_id, [info], job.id)
                [outcome] = await index_window(ctx, [info], job.id)
            await settle_index(ctx, job.id)
            await drop_cached_answers(ctx, [records.item_id_for(ctx.instance_id, key)])
    except RagError as exc:
        await records.finish_job(ctx.sessions, job.id, "failed", exc.message, {})
        raise
    except BaseException as exc:
        await finish_after_crash(ctx, job.id, exc, {})
        raise
    reason = f"{key}: {outcome.status} ({outcome.detail})"
    await records.log_line(ctx.sessions, job.id, reason)
    counts: dict[str, Any] = {outcome.status: 1}
    if usage := await record_usage(ctx, job.id, meter):
        counts["usage"] = usage
    await records.finish_job(ctx.sessions, job.id, "completed", reason, counts)
    return outcome


async def delete_one(ctx: SyncContext, key: str) -> bool:
    """Drop one item's chunks and row; False when the instance has no such item."""
    item = await records.find_item(ctx.sessions, ctx.instance_id, key)
    if item is None:
        return False
    await delete_item(ctx, item)
    await drop_cached_answers(ctx, [item.id])
    return True
