"""Stage 1: list the source."""

from __future__ import annotations

from rag_service.providers.protocols import ObjectInfo, ObjectSource


async def list_source(source: ObjectSource) -> dict[str, ObjectInfo]:
    """Every admitted object by key (the source applies prefix and globs)."""
    return {info.key: info async for info in source.list_objects()}
