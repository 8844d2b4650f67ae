"""Instances as the rest of the process reads them: rows and settings, the settings kept for a
moment (the query path reads them on every request), the `default` instance made on first use."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rag_service import instances, records
from rag_service.config import SAMPLE_DOCS
from rag_service.instances import InstanceConfig
from rag_service.models import Instance

DEFAULT_INSTANCE = "default"
# The instance `ragd up` makes matches keyword terms with `or`: AI Search's `and` (every query
# term in one chunk) finds nothing for most whole-sentence questions, and the offline embedding
# model alone misses some (NegConstraint keyword nDCG@10: or 0.714, and 0.000). Instances made
# through the API get AI Search's `and`.
DEFAULT_INSTANCE_CONFIG = {"retrieval_options": {"keyword_match_mode": "or"}}
# How long the query path trusts an instance's settings without reading them again. Changes made
# through this process apply at once; another process's changes within this many seconds.
CONFIG_TTL_S = 2.0

Sessions = async_sessionmaker[AsyncSession]


def normalise_source(source: str, kind: str | None = None) -> str:
    """Folders are stored as absolute paths; URLs (s3://...) and bucket names (type r2 or s3,
    as AI Search names an R2 source) as given."""
    if "://" in source or kind in ("r2", "s3"):
        return source
    return str(Path(source).expanduser().resolve())


class InstanceRegistry:
    """Reads instances through `sessions`; `backend` is what new instances are made on."""

    def __init__(self, sessions: Sessions, backend: str, default_source: str | None) -> None:
        self.sessions = sessions
        self.backend = backend
        self.default_source = default_source
        self._configs: dict[str, tuple[float, InstanceConfig]] = {}

    async def get(self, instance_id: str) -> tuple[Instance, InstanceConfig]:
        """The row and its settings, read now (NotFound when there is no such instance)."""
        async with self.sessions() as session:
            row = await records.get_instance(session, instance_id)
            cfg = instances.instance_config(row)
        self._configs[instance_id] = (time.monotonic(), cfg)
        return row, cfg

    async def config(self, instance_id: str) -> InstanceConfig:
        """The instance's settings for the query path: read at most every CONFIG_TTL_S seconds
        (a database round trip is a millisecond, a search's budget a few)."""
        cached = self._configs.get(instance_id)
        if cached is not None and time.monotonic() - cached[0] < CONFIG_TTL_S:
            return cached[1]
        return (await self.get(instance_id))[1]

    def forget(self, instance_id: str) -> None:
        """Read the instance's settings again on next use (after this process changed them)."""
        self._configs.pop(instance_id, None)

    async def ensure(
        self, instance_id: str, source: str, config: dict[str, Any] | None = None
    ) -> Instance:
        """Create the instance when missing; an existing one is left as it is, source included
        (also when another process created it meanwhile: hosts starting together)."""
        for _ in range(2):
            try:
                async with self.sessions() as session, session.begin():
                    row = await session.get(Instance, instance_id)
                    if row is None:
                        cfg = {"backend": self.backend, **(config or {})}
                        row = await records.create_instance(session, instance_id, source, cfg)
                    return row
            except IntegrityError:
                continue  # created by another process since the read: read it
        raise AssertionError("unreachable")  # pragma: no cover

    async def ensure_default(self, source: str | None = None) -> Instance:
        """The `default` instance; an explicit `source` re-points an existing one."""
        chosen = normalise_source(source or self.default_source or str(SAMPLE_DOCS))
        row = await self.ensure(DEFAULT_INSTANCE, chosen, DEFAULT_INSTANCE_CONFIG)
        if source and row.source != chosen:
            await self.set_source(DEFAULT_INSTANCE, chosen)
            row.source = chosen
        return row

    async def set_source(self, instance_id: str, source: str) -> None:
        """Point an instance at another source; the next sync drops what is no longer there."""
        async with self.sessions() as session, session.begin():
            row = await records.get_instance(session, instance_id)
            row.source = normalise_source(source)
        self.forget(instance_id)
