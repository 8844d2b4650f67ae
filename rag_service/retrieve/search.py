"""Query -> vector and/or keyword top-k -> fusion -> threshold -> at most max_num_results."""

from __future__ import annotations

import math
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
# rrf: reciprocal rank fusion; max: the better of the two lists' standardised scores.
FusionMethod = Literal["rrf", "max"]


@dataclass(frozen=True)
class RetrievalOptions:
    retrieval_type: RetrievalType = "hybrid"
    fusion_method: FusionMethod = "max"
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


@dataclass(frozen=True)
class _Standard:
    """One list's scores as z-scores: (score - mean) / std over the list's frame."""

    mean: float
    std: float
    floor: float  # the z of the frame's lowest score: what a chunk missing from the list gets

    def z(self, score: float | None) -> float:
        return self.floor if score is None else (score - self.mean) / self.std


def _standard(scores: Sequence[float], frame: int) -> _Standard | None:
    """z-scores over `frame` positions: the scores, padded with 0 up to `frame` (a keyword search
    that matched fewer chunks: a chunk that does not match scores 0). None for an empty list;
    a list of equal scores gives every hit z 0."""
    if not scores:
        return None
    pad = max(0, frame - len(scores))
    n = len(scores) + pad
    mean = math.fsum(scores) / n
    var = (math.fsum((s - mean) ** 2 for s in scores) + pad * mean * mean) / n
    std = math.sqrt(var) or 1.0
    low = 0.0 if pad else min(scores)
    return _Standard(mean, std, (low - mean) / std)


def collect(vector: Sequence[Match], keyword: Sequence[Match]) -> dict[str, ScoredChunk]:
    """Each chunk of either list once, with its score and rank in each list it is in."""
    chunks: dict[str, ScoredChunk] = {}
    for rank, m in enumerate(vector, 1):
        c = chunks.setdefault(m.id, _from_match(m))
        c.vector_score, c.vector_rank = m.score, rank
    for rank, m in enumerate(keyword, 1):
        c = chunks.setdefault(m.id, _from_match(m))
        c.keyword_score, c.keyword_rank = m.score, rank
    return chunks


def fuse(
    vector: Sequence[Match],
    keyword: Sequence[Match],
    method: FusionMethod,
    vector_pool: Sequence[float] | None = None,
) -> list[ScoredChunk]:
    """Merge two ranked lists, best first.

    Each list's scores are standardised (z-scores) over the candidate frame it was read from:
    the vector scores over `vector_pool` (the vector hits before the match threshold; default
    `vector`), the keyword scores over as many positions as the vector search returned, a shorter
    keyword list padded with 0 (the chunks that match no term). A chunk missing from a list gets
    that frame's lowest z.

    rrf: sum of 1/(k+rank), scaled so rank 1 in both lists is 1.0.
    max: the higher of the chunk's two z-scores (the list that is surer of it decides), shown
    scaled to 0-1 over the candidates (the best 1.0, the weakest 0).

    Ties, common under rrf (ranks (i, j) and (j, i) score alike), are broken on evidence: the
    higher z-score (the list surer of its chunk wins, as under max), then the sum of the two, the
    better single-list rank, the vector similarity, the keyword score; the chunk id only when all
    of these are equal, so that an order never depends on the instance's name."""
    chunks = collect(vector, keyword)
    pool = list(vector_pool) if vector_pool else [m.score for m in vector]
    frame = max(len(pool), len(keyword))
    zv = _standard(pool, len(pool)) if vector else None
    zk = _standard([m.score for m in keyword], frame)
    lists = int(bool(vector)) + int(bool(keyword))
    evidence: dict[str, tuple[float, ...]] = {}
    for c in chunks.values():
        # rounded: scores equal but for float noise tie, and the next piece of evidence decides
        pairs = ((zv, c.vector_score), (zk, c.keyword_score))
        zs = [round(s.z(x), 9) for s, x in pairs if s is not None]
        c.fusion_method = method
        if method == "rrf":
            rrf = sum(1.0 / (RRF_K + r) for r in (c.vector_rank, c.keyword_rank) if r)
            c.score = rrf * (RRF_K + 1) / max(lists, 1)
        else:
            c.score = max(zs)
        best_rank = min(r for r in (c.vector_rank, c.keyword_rank) if r)
        evidence[c.id] = (
            -max(zs),
            -math.fsum(zs),
            best_rank,
            -(c.vector_score if c.vector_score is not None else -math.inf),
            -(c.keyword_score if c.keyword_score is not None else -math.inf),
        )
    if method == "max" and chunks:
        low = min(c.score for c in chunks.values())
        span = max(c.score for c in chunks.values()) - low
        for c in chunks.values():
            c.score = (c.score - low) / span if span else 1.0
    return sorted(chunks.values(), key=lambda c: (-c.score, *evidence[c.id], c.id))


async def search(
    embedder: Embedder, index: VectorIndex, query: str, opts: RetrievalOptions
) -> list[ScoredChunk]:
    """Retrieve the best chunks for `query`. The match threshold applies to vector similarity:
    a vector hit below it is dropped; keyword hits have no cosine and are kept."""
    hits: list[Match] = []
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
        pool = [m.score for m in hits]
        chunks = fuse(vector_hits, keyword_hits, opts.fusion_method, vector_pool=pool)
    if opts.boost_by:
        chunks = boosted(chunks, opts.boost_by)
    return chunks[: opts.max_num_results]


def boosted(chunks: list[ScoredChunk], boosts: Sequence[Boost]) -> list[ScoredChunk]:
    """The candidates re-scored by `boost_by` and sorted again (ties keep their order)."""
    amounts = boost_amounts([c.metadata for c in chunks], boosts)
    for c, amount in zip(chunks, amounts, strict=True):
        c.score += amount
    return sorted(chunks, key=lambda c: -c.score)
