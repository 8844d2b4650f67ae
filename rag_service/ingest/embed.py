"""Stage 6: embed chunks, gathering the chunks of items indexed at the same time into larger
embedder calls (fewer calls, less padding: the embedder sorts a batch by length)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from rag_service.providers.protocols import Embedder, Vector

MAX_BATCH_TEXTS = 256


class EmbedQueue:
    """Callers await their own vectors; one drain task embeds whatever is waiting, together."""

    def __init__(self, embedder: Embedder, max_batch: int = MAX_BATCH_TEXTS) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._waiting: list[tuple[Sequence[str], asyncio.Future[Vector]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.embedder.dimensions), dtype=np.float32)
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch: list[tuple[Sequence[str], asyncio.Future[Vector]]] = []
            size = 0
            while self._waiting and (
                not batch or size + len(self._waiting[0][0]) <= self.max_batch
            ):
                texts, future = self._waiting.pop(0)
                batch.append((texts, future))
                size += len(texts)
            try:
                vectors = await self.embedder.embed_documents(
                    [t for texts, _ in batch for t in texts]
                )
                if vectors.shape != (size, self.embedder.dimensions):
                    raise ValueError(f"embedder returned shape {vectors.shape} for {size} texts")
            except Exception as exc:  # each waiting item fails on its own
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for texts, future in batch:
                if not future.done():
                    future.set_result(vectors[start : start + len(texts)])
                start += len(texts)
