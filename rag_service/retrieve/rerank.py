"""The optional rerank stage, as AI Search's `reranking`: the retrieved chunks (already cut by
the score threshold and max_num_results) are rescored by a cross-encoder, ordered by that
score, and those below the reranking match threshold are dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag_service.errors import BackendError
from rag_service.providers.protocols import Reranker
from rag_service.retrieve.search import ScoredChunk


@dataclass(frozen=True)
class RerankOptions:
    """`model` None: the instance's `reranking_model`, else the settings' default."""

    model: str | None = None
    match_threshold: float = 0.0


async def rerank(
    reranker: Reranker, query: str, chunks: Sequence[ScoredChunk], match_threshold: float = 0.0
) -> list[ScoredChunk]:
    """The chunks with `reranking_score` set and `score` replaced by it, best first (ties keep
    retrieval order), without those scored below `match_threshold`."""
    if not chunks:
        return []
    scores = await reranker.rerank(query, [c.text for c in chunks])
    if len(scores) != len(chunks):
        raise BackendError(
            f"reranker {reranker.model_id} returned {len(scores)} scores for {len(chunks)} texts"
        )
    for chunk, score in zip(chunks, scores, strict=True):
        chunk.reranking_score = chunk.score = float(score)
    kept = [c for c in chunks if c.score >= match_threshold]
    return sorted(kept, key=lambda c: -c.score)
