"""Creating, reconfiguring and deleting instances (the API's instance routes)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from rag_service import instances, records, uploads
from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.instance_registry import normalise_source
from rag_service.models import Instance
from rag_service.namespaces import split_key
from rag_service.runtime import Runtime
from rag_service.uploads import managed_source, uploads_dir

# Settings that change what an item's chunks are: its items must be indexed again.
REINDEX_FIELDS = frozenset({"chunk", "chunk_size", "chunk_overlap", "custom_metadata"})
MODEL_FIELDS = frozenset({"embedding_model", "embedding_pooling", "backend"})


async def create_instance(
    runtime: Runtime, instance_id: str, source: str | None, config: dict[str, Any]
) -> Instance:
    """Without a source the instance reads its own uploads folder (AI Search's managed
    upload-only instances)."""
    instances.check_instance_id(split_key(instance_id)[1])  # before it names a folder
    check_models(runtime, instances.validate_config(config))
    if source:
        chosen = confined_source(runtime.settings, source, config.get("type"))
    else:
        chosen = managed_source(runtime.settings, instance_id)
        config = {**config, "type": "s3" if "://" in chosen else "folder"}
    async with runtime.sessions() as session, session.begin():
        row = await records.create_instance(
            session, instance_id, chosen, {"backend": runtime.settings.backend, **config}
        )
    if not source and "://" not in chosen:
        await asyncio.to_thread(
            uploads_dir(runtime.settings, instance_id).mkdir, parents=True, exist_ok=True
        )
    return row


async def update_instance(
    runtime: Runtime, instance_id: str, source: str | None, changes: dict[str, Any]
) -> Instance:
    """Merge `changes` (top-level fields replace) into the config; the next sync applies them.

    Items indexed under another chunking or metadata setting become `outdated` (the next sync
    re-indexes them); the embedding model cannot change under an index that holds vectors."""
    async with runtime.sessions() as session, session.begin():
        row = await records.get_instance(session, instance_id)
        old = instances.instance_config(row)
        cfg = instances.validate_config({**row.config, **changes})
        changed = {f for f in REINDEX_FIELDS | MODEL_FIELDS if getattr(old, f) != getattr(cfg, f)}
        if changed & MODEL_FIELDS and await records.has_indexed_items(session, instance_id):
            raise InvalidRequest(
                "the embedding model and pooling of an instance cannot change once it has "
                "indexed items: create a new instance instead"
            )
        check_models(runtime, cfg)
        if changed & REINDEX_FIELDS:
            await records.mark_outdated(session, instance_id)
        row.config = cfg.model_dump(mode="json")
        if source:
            row.source = confined_source(runtime.settings, source, cfg.type)
    runtime.instances.forget(instance_id)
    return row


def check_models(runtime: Runtime, cfg: instances.InstanceConfig) -> None:
    """The models an instance names must be ones the operator allows."""
    for name in (cfg.embedding_model, cfg.ai_search_model, cfg.rewrite_model, cfg.reranking_model):
        runtime.providers.check_model(name)


def confined_source(settings: Settings, source: str, kind: str | None) -> str:
    """A source an API caller may point an instance at: a bucket (URL, or a bucket name with
    type r2/s3), or a folder under the operator's roots once symlinks are resolved, never the
    data dir (its database, indexes, tokens and other instances' uploads)."""
    chosen = normalise_source(source, kind)
    if "://" in chosen or kind in ("r2", "s3"):
        return chosen
    folder = Path(chosen)
    data_dir = settings.data_dir.resolve()
    inside = [root for root in settings.folder_roots() if folder.is_relative_to(root)]
    holds_data = folder.is_relative_to(data_dir) or data_dir.is_relative_to(folder)
    if holds_data or not inside:
        raise InvalidRequest(
            f"source folder {source!r} is not one this server may read: folders must be under "
            "RAGD_SOURCE_ROOTS (set by the operator); create an instance without a source to "
            "upload files instead"
        )
    return chosen


async def delete_instance(runtime: Runtime, instance_id: str) -> Instance:
    """The row (items, jobs and logs cascade), the open index, the instance's files and its
    uploads (the caller makes sure that no sync of it runs)."""
    async with runtime.sessions() as session, session.begin():
        row = await records.get_instance(session, instance_id)
        await session.delete(row)
    if uploads.is_managed(runtime.settings, row):
        await runtime.providers.upload_store(row, instances.instance_config(row)).clear()
    runtime.instances.forget(instance_id)
    await runtime.providers.drop_index(instance_id)
    await asyncio.to_thread(
        shutil.rmtree, runtime.settings.instance_dir(instance_id), ignore_errors=True
    )
    return row
