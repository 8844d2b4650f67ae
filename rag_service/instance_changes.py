"""Creating, reconfiguring and deleting instances (the API's instance routes)."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from rag_service import instances
from rag_service.errors import Conflict
from rag_service.items import uploads_dir
from rag_service.models import Instance
from rag_service.runtime import Runtime, normalise_source


async def create_instance(
    runtime: Runtime, instance_id: str, source: str | None, config: dict[str, Any]
) -> Instance:
    """Without a source the instance reads its own uploads folder (AI Search's managed
    upload-only instances)."""
    if source:
        chosen = normalise_source(source)
    else:
        folder = uploads_dir(runtime, instance_id)
        chosen = str(folder)
        config = {**config, "type": "folder"}
    async with runtime.sessions() as session, session.begin():
        row = await instances.create_instance(
            session, instance_id, chosen, {"backend": runtime.settings.backend, **config}
        )
    if not source:
        await asyncio.to_thread(
            uploads_dir(runtime, instance_id).mkdir, parents=True, exist_ok=True
        )
    return row


async def update_instance(
    runtime: Runtime, instance_id: str, source: str | None, changes: dict[str, Any]
) -> Instance:
    """Merge `changes` (top-level fields replace) into the config; the next sync applies them."""
    async with runtime.sessions() as session, session.begin():
        row = await instances.get_instance(session, instance_id)
        cfg = instances.validate_config({**row.config, **changes})
        row.config = cfg.model_dump(mode="json")
        if source:
            row.source = normalise_source(source)
    return row


async def delete_instance(runtime: Runtime, instance_id: str) -> Instance:
    """The row (items, jobs and logs cascade), the open index and the instance's files."""
    if runtime.is_syncing(instance_id):
        raise Conflict(f"instance {instance_id!r} is syncing: delete it when the job has ended")
    async with runtime.sessions() as session, session.begin():
        row = await instances.get_instance(session, instance_id)
        await session.delete(row)
    await runtime.drop_index(instance_id)
    await asyncio.to_thread(
        shutil.rmtree, runtime.settings.instance_dir(instance_id), ignore_errors=True
    )
    return row
