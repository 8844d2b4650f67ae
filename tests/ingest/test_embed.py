"""The chunks of a window of items are embedded in one call, each item getting its own rows;
transient failures are retried, permanent ones confined to their item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from rag_service.errors import BackendError, RagError, RateLimited, SourceError
from rag_service.ingest import retry
from rag_service.ingest.embed import embed_groups
from rag_service.ingest.retry import retry_transient
from rag_service.providers.protocols import Vector
from tests.fakes import HashingEmbedder


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BASE_DELAY_S", 0.001)


class FlakyEmbedder(HashingEmbedder):
    """Fails the first `rate_limited` calls with a 429, and any call holding "boom"."""

    def __init__(self, rate_limited: int = 0) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.rate_limited = rate_limited

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        self.calls.append(len(texts))
        await asyncio.sleep(0)
        if len(self.calls) <= self.rate_limited:
            raise RateLimited("429 from the model")
        if any("boom" in t for t in texts):
            raise BackendError("model refused the input")
        return await super().embed_documents(texts)


async def test_groups_share_one_call_and_get_their_own_vectors() -> None:
    emb = FlakyEmbedder()
    groups = [[f"item {i} chunk {n}" for n in range(i + 1)] for i in range(8)]
    results = await embed_groups(emb, groups)
    assert emb.calls == [36]
    for texts, vectors in zip(groups, results, strict=True):
        assert isinstance(vectors, np.ndarray)
        assert np.allclose(vectors, np.stack([emb._vector(t) for t in texts]))


async def test_a_failing_group_fails_alone() -> None:
    emb = FlakyEmbedder()
    results = await embed_groups(emb, [["fine"], ["boom", "x"], ["also fine"]])
    assert emb.calls == [4, 1, 2, 1]  # the joint call, then each group on its own
    assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)
    assert isinstance(results[1], BackendError)
    assert await embed_groups(emb, []) == []


async def test_rate_limits_are_retried() -> None:
    emb = FlakyEmbedder(rate_limited=2)
    [vectors] = await embed_groups(emb, [["a", "b"]])
    assert isinstance(vectors, np.ndarray) and vectors.shape == (2, emb.dimensions)
    assert emb.calls == [2, 2, 2]


async def test_permanent_errors_are_not_retried() -> None:
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise SourceError("access denied to bucket 'b'")

    with pytest.raises(SourceError):
        await retry_transient(refuse)
    assert calls == 1


async def test_transient_errors_give_up_after_the_last_attempt() -> None:
    calls = 0

    async def unreachable() -> None:
        nonlocal calls
        calls += 1
        raise SourceError("cannot reach the S3 endpoint", transient=True)

    with pytest.raises(RagError, match="cannot reach"):
        await retry_transient(unreachable, attempts=3)
    assert calls == 3
