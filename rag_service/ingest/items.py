"""Index items a window at a time: fetch -> extract -> chunk each (in threads, a group of items
at once), embed the window's chunks together, then write and record each item. Every outcome is
recorded; one item's failure never reaches another."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from rag_service import records
from rag_service.errors import ExtractError, NoTextError, ObjectTooLarge, RagError
from rag_service.ingest.chunk import Chunk, chunk_item
from rag_service.ingest.embed import embed_groups
from rag_service.ingest.fetch import SizeLimits, fetch_object
from rag_service.ingest.index import custom_fields, delete_chunks, index_chunks
from rag_service.ingest.isolate import extract_isolated
from rag_service.ingest.itemlog import Action, ItemLog, n_chunks
from rag_service.ingest.retry import retry_transient
from rag_service.instances import InstanceConfig
from rag_service.models import Item, ItemStatus
from rag_service.providers.protocols import (
    Embedder,
    MetadataValue,
    ObjectInfo,
    ObjectSource,
    Vector,
    VectorIndex,
)

log = logging.getLogger(__name__)

# Items fetched, extracted and chunked at the same time.
PREPARE_GROUP = 32


@dataclass
class SyncContext:
    """Everything indexing needs, resolved by the caller (runtime, worker or test)."""

    instance_id: str
    config: InstanceConfig
    source: ObjectSource
    embedder: Embedder
    index: VectorIndex
    sessions: records.Sessions
    limits: SizeLimits
    # Chunks embedded in one call. Large windows keep the embedder's batches full (a partial
    # batch per window costs ~15% with MiniLM on 2 cores at 32 items); an interrupted sync
    # redoes at most one window.
    window_chunks: int = 512

    @property
    def overlap_stages(self) -> bool:
        """Prepare the next window while this one embeds, unless the model runs on our own
        CPU: there, overlapping measured slower (bench/ingest.py, 200 docs, medians of 3 runs:
        ratio 0.879 overlapped against 0.931 in turn)."""
        return not getattr(self.embedder, "in_process", False)


@dataclass(frozen=True)
class Outcome:
    info: ObjectInfo
    status: ItemStatus | Literal["deleted"]  # completed | error | skipped, or gone
    detail: str  # the chunk count, or why the item failed
    retry: bool = False  # failed for a reason that may pass (the document itself is fine)

    @property
    def chunks(self) -> int:
        return int(self.detail) if self.status == "completed" else 0


Ready = tuple[ObjectInfo, list[Chunk], Item]  # an object, its chunks, its (running) item row


@dataclass
class Prepared:
    """A window after fetch/extract/chunk: items ready to embed, and those already decided."""

    ready: list[Ready] = field(default_factory=list)
    done: list[Outcome] = field(default_factory=list)
    since: dict[str, float] = field(default_factory=dict)  # key -> when its fetch began

    @property
    def chunks(self) -> int:
        return sum(len(chunks) for _, chunks, _ in self.ready)

    def add(self, other: Prepared) -> None:
        self.ready += other.ready
        self.done += other.done
        self.since |= other.since


async def chunks_of(ctx: SyncContext, info: ObjectInfo, item_log: ItemLog) -> list[Chunk]:
    """Fetch, extract and chunk one object, saying so in its log; raises RagError saying why
    it cannot be read."""
    started = time.perf_counter()
    data = await retry_transient(
        lambda: fetch_object(ctx.source, info, ctx.limits), what=f"fetching {info.key}"
    )
    text = await extract_isolated(info.key, data)  # in a worker process, time/memory-bound
    item_log.add(
        info.key,
        "extracted",
        f"extracted {len(text)} characters from {len(data)} bytes",
        since=started,
    )
    started = time.perf_counter()
    size = min(ctx.config.chunk_size, ctx.embedder.max_tokens - 2)
    overlap = min(ctx.config.overlap_tokens, size // 2)
    chunks = await asyncio.to_thread(chunk_item, info.key, data, text, ctx.embedder, size, overlap)
    if not chunks:
        raise NoTextError("no extractable text")
    n = len(chunks)
    item_log.add(info.key, "chunked", f"chunked into {n_chunks(n)}", chunk_count=n, since=started)
    return chunks


async def prepare_window(ctx: SyncContext, infos: list[ObjectInfo], job_id: str) -> Prepared:
    prepared = Prepared(since=dict.fromkeys((i.key for i in infos), time.perf_counter()))
    item_log = ItemLog(ctx.instance_id, job_id)
    results = await asyncio.gather(
        *(chunks_of(ctx, info, item_log) for info in infos), return_exceptions=True
    )
    chunked = [(i, r) for i, r in zip(infos, results, strict=True) if isinstance(r, list)]
    # The high-water marks are recorded before any chunk is written (crash safety).
    started = [(info, len(chunks)) for info, chunks in chunked]
    items = await records.begin_items(ctx.sessions, ctx.instance_id, started, job_id)
    prepared.ready = [
        (info, chunks, item) for (info, chunks), item in zip(chunked, items, strict=True)
    ]
    for info, result in zip(infos, results, strict=True):
        if isinstance(result, Exception):
            prepared.done.append(await _unreadable(ctx, info, job_id, result, item_log))
        elif not isinstance(result, list):
            raise result  # cancellation and the like are not an item's problem
    await item_log.write(ctx.sessions)
    return prepared


async def finish_window(ctx: SyncContext, prepared: Prepared, job_id: str) -> list[Outcome]:
    """Embed the window, write every item's chunks, then record each outcome. The writes of
    the whole window (at most `window_chunks` chunks) go out at once, so that a remote index
    merges them into few requests."""
    groups = [[c.text for c in chunks] for _, chunks, _ in prepared.ready]
    vectors = await embed_groups(ctx.embedder, groups)

    async def store(ready: Ready, vecs: Vector | RagError) -> dict[str, MetadataValue] | Exception:
        """The item's chunks written (returns the custom metadata they carry), or why not."""
        info, chunks, item = ready
        if isinstance(vecs, RagError):
            return vecs
        extra = custom_fields(info, ctx.config.custom_metadata)
        try:
            await retry_transient(
                lambda: index_chunks(ctx.index, item.id, info, chunks, vecs, extra, _written(item)),
                what=f"indexing {info.key}",
            )
        except Exception as exc:
            return exc
        return extra

    stored = await asyncio.gather(*map(store, prepared.ready, vectors))
    outcomes = list(prepared.done)
    item_log = ItemLog(ctx.instance_id, job_id)
    ends = []
    for (info, chunks, item), result in zip(prepared.ready, stored, strict=True):
        if isinstance(result, Exception):
            outcomes.append(await _unreadable(ctx, info, job_id, result, item_log))
            continue
        n = len(chunks)
        ends.append(records.ItemEnd(item.id, info, "completed", chunks_count=n, metadata=result))
        since = prepared.since.get(info.key)
        item_log.add(info.key, "indexed", f"indexed {n_chunks(n)}", chunk_count=n, since=since)
        outcomes.append(Outcome(info, "completed", str(n)))
    await records.end_items(ctx.sessions, ends)
    await item_log.write(ctx.sessions)
    return outcomes


async def index_window(ctx: SyncContext, infos: list[ObjectInfo], job_id: str) -> list[Outcome]:
    return await finish_window(ctx, await prepare_window(ctx, infos, job_id), job_id)


async def _unreadable(
    ctx: SyncContext, info: ObjectInfo, job_id: str, exc: Exception, item_log: ItemLog
) -> Outcome:
    """Record an item that could not be read (its log line goes to `item_log`); its old text (if
    any) must stop answering."""
    status: ItemStatus
    if isinstance(exc, RagError):
        status = "skipped" if isinstance(exc, NoTextError) else "error"
        # A document that cannot be read keeps its etag (not retried until it changes); a
        # backend or source failure leaves it blank, so that the next sync tries again.
        message, retry = exc.message, not isinstance(exc, ExtractError | ObjectTooLarge)
    else:  # a bug or an unforeseen library error, confined to the one item
        log.error("indexing %s failed unexpectedly", info.key, exc_info=exc)
        status, retry = "error", True
        message = f"internal error while indexing: {type(exc).__name__}"
    item = await records.begin_item(ctx.sessions, ctx.instance_id, info, job_id, 0)
    if not retry:
        await delete_chunks(ctx.index, item.id, 0, _written(item))
    await records.end_item(ctx.sessions, item.id, info, status, error=message, retry=retry)
    action: Action = "skipped" if status == "skipped" else "error"
    item_log.add(info.key, action, message, error_type=type(exc).__name__)
    return Outcome(info, status, message, retry)


def _written(item: Item) -> int:
    """How many chunk ids of the item may exist in the index."""
    return max(item.chunk_high_water, item.chunks_count)


async def delete_item(ctx: SyncContext, item: Item) -> None:
    """Remove an item's chunks from the index, then its row."""
    await retry_transient(
        lambda: delete_chunks(ctx.index, item.id, 0, _written(item)), what=f"deleting {item.key}"
    )
    await records.delete_item(ctx.sessions, item.id)
