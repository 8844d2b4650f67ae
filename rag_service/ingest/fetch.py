"""Stage 3: read an object's bytes under the size cap for its type."""

from __future__ import annotations

from dataclasses import dataclass

from rag_service.errors import ObjectTooLarge
from rag_service.ingest.extract import is_text_type
from rag_service.providers.protocols import ObjectInfo, ObjectSource


@dataclass(frozen=True)
class SizeLimits:
    max_file_bytes: int
    max_text_file_bytes: int

    def cap_for(self, key: str) -> int:
        return self.max_text_file_bytes if is_text_type(key) else self.max_file_bytes


async def fetch_object(source: ObjectSource, info: ObjectInfo, limits: SizeLimits) -> bytes:
    cap = limits.cap_for(info.key)
    if info.size > cap:
        raise ObjectTooLarge(f"file is {info.size} bytes, over the {cap} byte limit for its type")
    return await source.fetch(info.key, cap)
