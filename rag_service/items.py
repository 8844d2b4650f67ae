"""An instance's items for the API: listing with AI Search's filters, chunks, uploads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path, PurePosixPath

from sqlalchemy import Select, case, select

from rag_service.errors import InvalidRequest, NotFound
from rag_service.ingest.index import chunk_id, folder_of
from rag_service.models import Instance, Item
from rag_service.paging import count_and_page
from rag_service.providers.protocols import Match
from rag_service.retrieve.filters import NormFilter, matches
from rag_service.runtime import Runtime

# AI Search's "status" order: work in progress and problems first.
STATUS_ORDER = {"running": 0, "queued": 1, "error": 2, "outdated": 3, "skipped": 4, "completed": 5}
UPLOADS = "uploads"


def uploads_dir(runtime: Runtime, instance_id: str) -> Path:
    """The folder of an instance created without a source (AI Search's managed uploads)."""
    return (runtime.settings.instance_dir(instance_id) / UPLOADS).resolve()


def _query(
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
    runtime: Runtime,
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
    query = _query(instance_id, item_id, key, status, search, sort_by)
    async with runtime.sessions() as session:
        if metadata_filter is None:
            return await count_and_page(session, query, page, per_page)
        rows = [
            i
            for i in (await session.scalars(query)).all()
            if matches(item_attributes(i), metadata_filter)
        ]
    start = (page - 1) * per_page
    return len(rows), rows[start : start + per_page]


async def get_item(runtime: Runtime, instance_id: str, item_id: str) -> Item:
    async with runtime.sessions() as session:
        item = await session.get(Item, item_id)
    if item is None or item.instance_id != instance_id:
        raise NotFound(f"item {item_id!r} not found in instance {instance_id!r}")
    return item


async def item_chunks(
    runtime: Runtime, instance_id: str, item: Item, limit: int, offset: int
) -> list[Match]:
    """The item's indexed chunks in document order (ids `<item-id>:<n>`)."""
    _, cfg = await runtime.get_instance(instance_id)
    index = await runtime.index(instance_id, cfg)
    end = min(offset + limit, item.chunks_count)
    return await index.get([chunk_id(item.id, n) for n in range(offset, end)])


def safe_key(key: str) -> str:
    """An object key that stays inside its folder: relative, no `..`, no empty parts."""
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if not key.strip() or key.startswith("/") or any(p.startswith(".") for p in parts):
        raise InvalidRequest(
            f"invalid item key {key!r}: use a relative path like 'docs/guide.md' with no part "
            "starting with '.'"
        )
    if len(key.encode()) > 1024:
        raise InvalidRequest("item keys are limited to 1024 bytes")
    return "/".join(parts)


def folder_of_instance(row: Instance) -> Path:
    """The folder behind an instance; uploads and downloads need one."""
    if "://" in row.source or not row.source.startswith("/"):
        raise InvalidRequest(
            f"instance {row.id!r} reads a bucket ({row.source}): upload objects to the bucket "
            "itself; uploads here need an instance created without a source or on a folder"
        )
    return Path(row.source)


async def save_upload(runtime: Runtime, instance_id: str, key: str, data: bytes) -> str:
    """Write an uploaded file into the instance's folder; returns the item key."""
    row, cfg = await runtime.get_instance(instance_id)
    folder = folder_of_instance(row)
    key = safe_key(key)
    prefix = cfg.source_params.prefix.lstrip("/")
    key = key if key.startswith(prefix) else prefix + key
    target = folder / key

    def write() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.upload")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    await asyncio.to_thread(write)
    return key


async def remove_upload(runtime: Runtime, instance_id: str, key: str) -> None:
    """Deleting an item of a managed-uploads instance deletes its file too (else the next sync
    would index it again). Items of other sources stay in their source."""
    row, _ = await runtime.get_instance(instance_id)
    uploads = uploads_dir(runtime, instance_id)
    if Path(row.source) == uploads:
        path = (uploads / safe_key(key)).resolve()
        if path.is_relative_to(uploads):
            await asyncio.to_thread(path.unlink, missing_ok=True)
