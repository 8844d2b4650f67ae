"""The composition of one process: database, instances, providers, the query pipeline, and the
sync operations run here (under this process's per-instance lock)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from rag_service import db
from rag_service.config import Settings
from rag_service.errors import Conflict
from rag_service.ingest.fetch import SizeLimits
from rag_service.ingest.isolate import close_default_pool
from rag_service.ingest.items import Outcome
from rag_service.ingest.sync import (
    SyncContext,
    SyncProgress,
    SyncResult,
    delete_one,
    index_one,
    run_sync,
)
from rag_service.instance_registry import InstanceRegistry
from rag_service.query.pipeline import QueryPipeline
from rag_service.registry import Providers


class Runtime:
    """Owns the engine and sessions, the instance registry, the providers and the pipeline."""

    def __init__(self, settings: Settings, providers: Providers | None = None) -> None:
        self.settings = settings
        self.engine: AsyncEngine = db.create_engine(settings.resolved_database_url)
        self.sessions = db.session_factory(self.engine)
        self.instances = InstanceRegistry(self.sessions, settings.backend, settings.source)
        self.providers = providers or Providers(settings)
        self.pipeline = QueryPipeline(settings, self.instances, self.providers)
        self._sync_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> Runtime:
        """The data dir holds the database, every chunk's text and the tokens: its owner alone
        may enter it (0700), whatever the umask made of it."""
        data_dir = self.settings.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        await db.upgrade(self.engine)
        return self

    async def close(self) -> None:
        await self.providers.close()
        await self.engine.dispose()
        close_default_pool()  # the extraction workers (a later sync starts new ones)

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def sync(
        self,
        instance_id: str,
        job_source: str = "user",
        progress: SyncProgress | None = None,
        job_id: str | None = None,
        description: str | None = None,
    ) -> SyncResult:
        """Run one sync now; a second sync of the same instance is refused while one runs."""
        async with self._holding(instance_id, wait=False):
            ctx = await self.sync_context(instance_id)
            return await run_sync(ctx, job_source, progress, job_id, description)

    async def index_item(self, instance_id: str, key: str, job_source: str = "user") -> Outcome:
        """Index one object now, as a job of its own, after a running sync of the instance
        ends; a vanished object's item is deleted."""
        async with self._holding(instance_id, wait=True):
            ctx = await self.sync_context(instance_id)
            return await index_one(ctx, key, job_source)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        """Drop one item's chunks and row (the object stays in the source), after a running
        sync of the instance ends; False if unknown."""
        async with self._holding(instance_id, wait=True):
            ctx = await self.sync_context(instance_id)
            return await delete_one(ctx, key)

    def is_syncing(self, instance_id: str) -> bool:
        lock = self._sync_locks.get(instance_id)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def _holding(self, instance_id: str, wait: bool) -> AsyncIterator[None]:
        lock = self._sync_locks.setdefault(instance_id, asyncio.Lock())
        if lock.locked() and not wait:
            raise Conflict(f"a sync of instance {instance_id!r} is already running")
        async with lock:
            yield

    async def sync_context(self, instance_id: str) -> SyncContext:
        row, cfg = await self.instances.get(instance_id)
        return SyncContext(
            instance_id=instance_id,
            config=cfg,
            source=self.providers.source(row, cfg),
            embedder=await self.providers.embedder(cfg),
            index=await self.providers.index(instance_id, cfg),
            sessions=self.sessions,
            limits=SizeLimits(self.settings.max_file_bytes, self.settings.max_text_file_bytes),
            window_chunks=self.settings.ingest_window_chunks,
        )
