"""Query -> vector and/or keyword top-k -> fusion -> threshold -> at most max_num_results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from rag_service.ingest.index import CHUNK_FIELDS
from rag_service.providers.protocols import Embedder, Filter, Match, MetadataValue, VectorIndex
from rag_service.retrieve.boost import Boost, boost_amounts

RRF_K = 60
RetrievalType = Literal["vector", "keyword", "hybrid"]
# "and": a keyword hit holds every content word of the query (AI Search's default); "or": any.
KeywordMatchMode = Literal["and", "or"]


@dataclass(frozen=True)
class RetrievalOptions:
    retrieval_type: RetrievalType = "hybrid"
    fusion_method: Literal["rrf", "max"] = "rrf"
    keyword_match_mode: KeywordMatchMode = "and"
    match_threshold: float = 0.4
    max_num_results: int = 10
    filters: Filter | None = None
    boost_by: tuple[Boost, ...] = ()

    @property
    def candidates(self) -> int:
        """How deep each list is read before fusion."""
        return max(50, 4 * self.max_num_results)


@dataclass
class ScoredChunk:
    id: str
    text: str
    score: float
    metadata: Mapping[str, MetadataValue]
    vector_score: float | None = None
    vector_rank: int | None = None
    keyword_score: float | None = None
    keyword_rank: int | None = None
    fusion_method: str | None = None
    reranking_score: float | None = None

    @property
    def key(self) -> str:
        return str(self.metadata.get("filename", ""))

    @property
    def item_id(self) -> str:
        return str(self.metadata.get("item_id", self.id.rsplit(":", 1)[0]))

    @property
    def timestamp(self) -> float | None:
        ts = self.metadata.get("timestamp")
        return float(ts) if isinstance(ts, int | float) else None

    @property
    def attributes(self) -> dict[str, MetadataValue]:
        """The item's metadata: without the chunk's text, ids and byte range."""
        return {k: v for k, v in self.metadata.items() if k not in CHUNK_FIELDS}


def _from_match(m: Match) -> ScoredChunk:
    return ScoredChunk(
        id=m.id, text=str(m.metadata.get("text", "")), score=m.score, metadata=m.metadata
    )


def fuse(
    vector: Sequence[Match], keyword: Sequence[Match], method: Literal["rrf", "max"]
) -> list[ScoredChunk]:
    """Merge two ranked lists. rrf: sum of 1/(k+rank), scaled so rank 1 in both is 1.0.
    max: the higher of the cosine score and the keyword score scaled by the best keyword hit."""
    chunks: dict[str, ScoredChunk] = {}
    for rank, m in enumerate(vector, 1):
        c = chunks.setdefault(m.id, _from_match(m))
        c.vector_score, c.vector_rank = m.score, rank
    top_kw = max((m.score for m in keyword), default=1.0) or 1.0
    for rank, m in enumerate(keyword, 1):
        c = chunks.setdefault(m.id, _from_match(m))
        c.keyword_score, c.keyword_rank = m.score, rank
    lists = int(bool(vector)) + int(bool(keyword))
    for c in chunks.values():
        c.fusion_method = method
        if method == "rrf":
            rrf = sum(1.0 / (RRF_K + r) for r in (c.vector_rank, c.keyword_rank) if r)
            c.score = rrf * (RRF_K + 1) / max(lists, 1)
        else:
            kw = (c.keyword_score or 0.0) / top_kw
            c.score = max(c.vector_score or 0.0, kw)
    return sorted(chunks.values(), key=lambda c: (-c.score, c.id))


async def search(
    embedder: Embedder, index: VectorIndex, query: str, opts: RetrievalOptions
) -> list[ScoredChunk]:
    """Retrieve the best chunks for `query`. The match threshold applies to vector similarity:
    a vector hit below it is dropped; keyword hits have no cosine and are kept."""
    vector_hits: list[Match] = []
    keyword_hits: list[Match] = []
    if opts.retrieval_type in ("vector", "hybrid"):
        qvec = await embedder.embed_query(query)
        hits = await index.query(qvec, opts.candidates, opts.filters)
        vector_hits = [m for m in hits if m.score >= opts.match_threshold]
    if opts.retrieval_type in ("keyword", "hybrid"):
        keyword_hits = await index.keyword_query(
            query, opts.candidates, opts.filters, opts.keyword_match_mode
        )
    if opts.retrieval_type == "vector":
        chunks = [_from_match(m) for m in vector_hits]
        for rank, (c, m) in enumerate(zip(chunks, vector_hits, strict=True), 1):
            c.vector_score, c.vector_rank = m.score, rank
    elif opts.retrieval_type == "keyword":
        top = max((m.score for m in keyword_hits), default=1.0) or 1.0
        chunks = [replace(_from_match(m), score=m.score / top) for m in keyword_hits]
        for rank, (c, m) in enumerate(zip(chunks, keyword_hits, strict=True), 1):
            c.keyword_score, c.keyword_rank = m.score, rank
    else:
        chunks = fuse(vector_hits, keyword_hits, opts.fusion_method)
    if opts.boost_by:
        chunks = boosted(chunks, opts.boost_by)
    return chunks[: opts.max_num_results]


def boosted(chunks: list[ScoredChunk], boosts: Sequence[Boost]) -> list[ScoredChunk]:
    """The candidates re-scored by `boost_by` and sorted again (ties keep their order)."""
    amounts = boost_amounts([c.metadata for c in chunks], boosts)
    for c, amount in zip(chunks, amounts, strict=True):
        c.score += amount
    return sorted(chunks, key=lambda c: -c.score)
