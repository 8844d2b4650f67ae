"""Stage 7: write an item's chunks under deterministic ids and drop leftovers."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence

from rag_service.ingest.chunk import Chunk
from rag_service.ingest.chunk_offsets import END_BYTE, START_BYTE
from rag_service.instances import CustomMetadataField, custom_value
from rag_service.providers.protocols import (
    MetadataValue,
    ObjectInfo,
    Vector,
    VectorIndex,
    VectorRecord,
)

UPSERT_BATCH = 256
# Metadata of one chunk, not of its item: kept out of what responses show as the item's.
CHUNK_FIELDS = frozenset({"text", "item_id", START_BYTE, END_BYTE})


def chunk_id(item_id: str, n: int) -> str:
    return f"{item_id}:{n}"


def folder_of(key: str) -> str:
    """AutoRAG's folder: the key's parent path with a trailing slash, no leading one."""
    parent = posixpath.dirname(key.lstrip("/"))
    return f"{parent}/" if parent else ""


def custom_fields(
    info: ObjectInfo, declared: Sequence[CustomMetadataField]
) -> dict[str, MetadataValue]:
    """The object's custom metadata for the declared fields (names case-insensitive), typed as
    declared; a value not of its field's type is left out. Text is kept up to 500 characters,
    whole (filters compare its first 64 bytes: rag_service.providers.filters.indexed)."""
    out: dict[str, MetadataValue] = {}
    lowered = {k.lower(): v for k, v in info.metadata.items()}
    for spec in declared:
        raw = lowered.get(spec.field_name.lower())
        if raw is None:
            continue
        try:
            out[spec.field_name] = custom_value(spec.data_type, raw)
        except ValueError:
            continue
    return out


def chunk_metadata(
    item_id: str, info: ObjectInfo, extra: Mapping[str, MetadataValue], chunk: Chunk
) -> dict[str, MetadataValue]:
    """What the index keeps with a chunk; its byte range only where it is known."""
    offsets = {START_BYTE: chunk.start_byte, END_BYTE: chunk.end_byte}
    return {
        **extra,
        "item_id": item_id,
        "filename": info.key,
        "folder": folder_of(info.key),
        "timestamp": int(info.last_modified),
        "text": chunk.text,
        **{k: v for k, v in offsets.items() if v is not None},
    }


async def index_chunks(
    index: VectorIndex,
    item_id: str,
    info: ObjectInfo,
    chunks: Sequence[Chunk],
    vectors: Vector,
    extra: Mapping[str, MetadataValue],
    previous_count: int,
) -> None:
    """Upsert `<item-id>:<n>` for every chunk, then delete ids past the new count."""
    records = [
        VectorRecord(chunk_id(item_id, n), vectors[n], chunk_metadata(item_id, info, extra, c))
        for n, c in enumerate(chunks)
    ]
    for start in range(0, len(records), UPSERT_BATCH):
        await index.upsert(records[start : start + UPSERT_BATCH])
    await delete_chunks(index, item_id, len(chunks), previous_count)


async def delete_chunks(index: VectorIndex, item_id: str, start: int, stop: int) -> None:
    ids = [chunk_id(item_id, n) for n in range(start, stop)]
    for first in range(0, len(ids), UPSERT_BATCH):
        await index.delete(ids[first : first + UPSERT_BATCH])
