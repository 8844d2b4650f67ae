"""Chunks of items indexed at the same time are embedded together, each item getting its rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from rag_service.ingest.embed import EmbedQueue
from rag_service.providers.protocols import Vector
from tests.fakes import HashingEmbedder


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        self.calls.append(len(texts))
        await asyncio.sleep(0.01)
        if any("boom" in t for t in texts):
            raise RuntimeError("model failed")
        return await super().embed_documents(texts)


async def test_concurrent_items_share_calls_and_get_their_own_vectors() -> None:
    emb = CountingEmbedder()
    queue = EmbedQueue(emb, max_batch=10)
    items = [[f"item {i} chunk {n}" for n in range(3)] for i in range(8)]
    results = await asyncio.gather(*(queue.embed(texts) for texts in items))
    assert sum(emb.calls) == 24 and len(emb.calls) < 8 and max(emb.calls) <= 10
    for texts, vectors in zip(items, results, strict=True):
        expected = np.stack([emb._vector(t) for t in texts])
        assert np.allclose(vectors, expected)


async def test_a_failed_call_fails_only_its_batch() -> None:
    emb = CountingEmbedder()
    queue = EmbedQueue(emb, max_batch=2)
    good, bad = queue.embed(["fine", "also fine"]), queue.embed(["boom", "x"])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(results[0], np.ndarray) and results[0].shape == (2, emb.dimensions)
    assert isinstance(results[1], RuntimeError)
    assert (await queue.embed([])).shape == (0, emb.dimensions)


@pytest.mark.parametrize("max_batch", [1, 5])
async def test_a_request_larger_than_the_batch_still_goes_through(max_batch: int) -> None:
    emb = CountingEmbedder()
    vectors = await EmbedQueue(emb, max_batch=max_batch).embed([f"t{n}" for n in range(7)])
    assert vectors.shape == (7, emb.dimensions)
