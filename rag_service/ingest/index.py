"""Stage 7: write an item's chunks under deterministic ids and drop leftovers."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from datetime import datetime

from rag_service.instances import CustomMetadataField
from rag_service.providers.protocols import (
    MetadataValue,
    ObjectInfo,
    Vector,
    VectorIndex,
    VectorRecord,
)

UPSERT_BATCH = 256


def chunk_id(item_id: str, n: int) -> str:
    return f"{item_id}:{n}"


def folder_of(key: str) -> str:
    """AutoRAG's folder: the key's parent path with a trailing slash, no leading one."""
    parent = posixpath.dirname(key.lstrip("/"))
    return f"{parent}/" if parent else ""


def custom_fields(
    info: ObjectInfo, declared: Sequence[CustomMetadataField]
) -> dict[str, MetadataValue]:
    """The object's custom metadata for the declared fields, typed as declared."""
    out: dict[str, MetadataValue] = {}
    lowered = {k.lower(): v for k, v in info.metadata.items()}
    for spec in declared:
        raw = lowered.get(spec.field_name.lower())
        if raw is None:
            continue
        value: MetadataValue
        try:
            if spec.data_type == "number":
                value = float(raw)
            elif spec.data_type == "boolean":
                value = raw.strip().lower() in {"1", "true", "yes"}
            elif spec.data_type == "datetime":
                value = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            else:
                value = raw.encode()[:64].decode(errors="ignore")
        except ValueError:
            continue
        out[spec.field_name] = value
    return out


def chunk_metadata(
    item_id: str, info: ObjectInfo, extra: Mapping[str, MetadataValue], text: str
) -> dict[str, MetadataValue]:
    return {
        **extra,
        "item_id": item_id,
        "filename": info.key,
        "folder": folder_of(info.key),
        "timestamp": int(info.last_modified),
        "text": text,
    }


async def index_chunks(
    index: VectorIndex,
    item_id: str,
    info: ObjectInfo,
    chunks: Sequence[str],
    vectors: Vector,
    extra: Mapping[str, MetadataValue],
    previous_count: int,
) -> None:
    """Upsert `<item-id>:<n>` for every chunk, then delete ids past the new count."""
    records = [
        VectorRecord(chunk_id(item_id, n), vectors[n], chunk_metadata(item_id, info, extra, text))
        for n, text in enumerate(chunks)
    ]
    for start in range(0, len(records), UPSERT_BATCH):
        await index.upsert(records[start : start + UPSERT_BATCH])
    await delete_chunks(index, item_id, len(chunks), previous_count)


async def delete_chunks(index: VectorIndex, item_id: str, start: int, stop: int) -> None:
    ids = [chunk_id(item_id, n) for n in range(start, stop)]
    for first in range(0, len(ids), UPSERT_BATCH):
        await index.delete(ids[first : first + UPSERT_BATCH])
