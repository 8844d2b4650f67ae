"""A whole sync of one instance: list -> diff -> per item fetch ... index -> record."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rag_service.errors import NoTextError, RagError
from rag_service.ingest import record
from rag_service.ingest.chunk import chunk_text
from rag_service.ingest.diff import plan_sync
from rag_service.ingest.embed import EmbedQueue
from rag_service.ingest.extract import extract_text
from rag_service.ingest.fetch import SizeLimits, fetch_object
from rag_service.ingest.index import custom_fields, delete_chunks, index_chunks
from rag_service.ingest.list import list_source
from rag_service.instances import InstanceConfig
from rag_service.models import Item, utcnow
from rag_service.providers.protocols import Embedder, ObjectInfo, ObjectSource, VectorIndex

log = logging.getLogger(__name__)

# Extraction runs in threads while the embedder works on another item's chunks.
ITEM_CONCURRENCY = 32


@dataclass
class SyncContext:
    """Everything one sync needs, resolved by the caller (runtime, worker or test)."""

    instance_id: str
    config: InstanceConfig
    source: ObjectSource
    embedder: Embedder
    index: VectorIndex
    sessions: record.Sessions
    limits: SizeLimits
    embed_queue: EmbedQueue | None = None

    def __post_init__(self) -> None:
        if self.embed_queue is None:
            self.embed_queue = EmbedQueue(self.embedder)


@dataclass
class SyncResult:
    job_id: str
    status: str  # completed | failed
    end_reason: str
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


Progress = Callable[[str, ObjectInfo | Item, str], None]


async def run_sync(
    ctx: SyncContext,
    job_source: str = "user",
    progress: Progress | None = None,
    job_id: str | None = None,
) -> SyncResult:
    """Sync an instance's index with its source; one item's failure never stops the job."""
    started = time.perf_counter()
    await record.end_interrupted_jobs(ctx.sessions, ctx.instance_id)
    job = await record.start_job(ctx.sessions, ctx.instance_id, job_source, job_id=job_id)
    counts: Counter[str] = Counter()
    try:
        listing = await list_source(ctx.source)
        items = await record.load_items(ctx.sessions, ctx.instance_id)
        plan = plan_sync(listing, items)
        counts.update(
            listed=len(listing),
            new=len(plan.new),
            changed=len(plan.changed),
            unchanged=len(plan.unchanged),
            deleted=len(plan.deleted),
        )
        await record.set_job_counts(ctx.sessions, job.id, dict(counts))
        await record.log_line(
            ctx.sessions,
            job.id,
            f"listed {len(listing)} objects: {len(plan.new)} new, {len(plan.changed)} changed, "
            f"{len(plan.unchanged)} unchanged, {len(plan.deleted)} deleted",
        )
        by_key = {item.key: item for item in items}
        await record.touch_items(ctx.sessions, [by_key[i.key].id for i in plan.unchanged], utcnow())
        for item in plan.deleted:
            await delete_chunks(
                ctx.index, item.id, 0, max(item.chunk_high_water, item.chunks_count)
            )
            await record.delete_item(ctx.sessions, item.id)
            if progress:
                progress("deleted", item, "")
        limit = asyncio.Semaphore(ITEM_CONCURRENCY)

        async def one(info: ObjectInfo) -> None:
            async with limit:
                status, detail = await index_item_safely(ctx, info, job.id)
            counts[status] += 1
            counts["chunks"] += int(detail) if status == "completed" else 0
            if progress:
                progress(status, info, detail)

        await asyncio.gather(*(one(info) for info in plan.to_index))
    except RagError as exc:
        reason = f"sync failed: {exc.message}"
        await record.log_line(ctx.sessions, job.id, reason, record.ERROR)
        await record.finish_job(ctx.sessions, job.id, "failed", reason, dict(counts))
        return SyncResult(job.id, "failed", reason, counts, time.perf_counter() - started)
    except BaseException:
        await record.finish_job(ctx.sessions, job.id, "failed", "sync crashed", dict(counts))
        raise
    reason = (
        f"{counts['completed']} indexed, {counts['error']} errors, {counts['skipped']} skipped, "
        f"{counts['unchanged']} unchanged, {counts['deleted']} deleted"
    )
    await record.log_line(ctx.sessions, job.id, f"done: {reason}")
    await record.finish_job(ctx.sessions, job.id, "completed", reason, dict(counts))
    return SyncResult(job.id, "completed", reason, counts, time.perf_counter() - started)


async def index_item_safely(ctx: SyncContext, info: ObjectInfo, job_id: str) -> tuple[str, str]:
    """`index_item`, with a bug or an unforeseen library error confined to the one item."""
    try:
        return await index_item(ctx, info, job_id)
    except Exception as exc:
        log.exception("indexing %s failed unexpectedly", info.key)
        message = f"internal error while indexing: {type(exc).__name__}"
        item = await record.begin_item(ctx.sessions, ctx.instance_id, info, job_id, 0)
        await record.end_item(ctx.sessions, item.id, info, "error", error=message, retry=True)
        await record.log_line(ctx.sessions, job_id, f"{info.key}: {message}", record.ERROR)
        return "error", message


async def index_item(ctx: SyncContext, info: ObjectInfo, job_id: str) -> tuple[str, str]:
    """Index one object; returns (status, chunk count or the reason it failed)."""
    item_id = record.item_id_for(ctx.instance_id, info.key)
    cfg = ctx.config
    try:
        data = await fetch_object(ctx.source, info, ctx.limits)
        text = await asyncio.to_thread(extract_text, info.key, data)
        size = min(cfg.chunk_size, ctx.embedder.max_tokens - 2)
        overlap = min(cfg.overlap_tokens, size // 2)
        chunks = await asyncio.to_thread(chunk_text, text, ctx.embedder, size, overlap)
        if not chunks:
            raise NoTextError("no extractable text")
    except RagError as exc:
        status = "skipped" if isinstance(exc, NoTextError) else "error"
        item = await record.begin_item(ctx.sessions, ctx.instance_id, info, job_id, 0)
        # The object changed into something unreadable: its old text must stop answering.
        await delete_chunks(ctx.index, item_id, 0, max(item.chunk_high_water, item.chunks_count))
        await record.end_item(ctx.sessions, item_id, info, status, error=exc.message)
        await record.log_line(ctx.sessions, job_id, f"{info.key}: {exc.message}", record.WARNING)
        return status, exc.message
    extra = custom_fields(info, cfg.custom_metadata)
    item = await record.begin_item(ctx.sessions, ctx.instance_id, info, job_id, len(chunks))
    try:
        assert ctx.embed_queue is not None
        vectors = await ctx.embed_queue.embed(chunks)
        await index_chunks(
            ctx.index,
            item_id,
            info,
            chunks,
            vectors,
            extra,
            max(item.chunk_high_water, item.chunks_count),
        )
    except RagError as exc:
        await record.end_item(ctx.sessions, item_id, info, "error", error=exc.message, retry=True)
        await record.log_line(ctx.sessions, job_id, f"{info.key}: {exc.message}", record.ERROR)
        return "error", exc.message
    await record.end_item(
        ctx.sessions, item_id, info, "completed", chunks_count=len(chunks), metadata=extra
    )
    return "completed", str(len(chunks))
