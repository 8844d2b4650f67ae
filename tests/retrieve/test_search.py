"""Fusion and the retrieval options, on hand-made ranked lists and a real index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, Match, VectorRecord
from rag_service.retrieve.search import RRF_K, RetrievalOptions, fuse, search
from tests.fakes import HashingEmbedder


def m(id_: str, score: float) -> Match:
    return Match(id_, score, {"text": id_, "filename": f"{id_}.md"})


def test_rrf_sums_reciprocal_ranks_and_scales_to_one() -> None:
    fused = fuse([m("a", 0.9), m("b", 0.8)], [m("b", 12.0), m("c", 3.0)], "rrf")
    by_id = {c.id: c for c in fused}
    assert [c.id for c in fused] == ["b", "a", "c"]
    expected_b = (1 / (RRF_K + 2) + 1 / (RRF_K + 1)) * (RRF_K + 1) / 2
    assert by_id["b"].score == pytest.approx(expected_b)
    assert (by_id["b"].vector_rank, by_id["b"].keyword_rank) == (2, 1)
    assert by_id["a"].keyword_rank is None and by_id["c"].vector_score is None
    top = fuse([m("x", 0.5)], [m("x", 2.0)], "rrf")[0]
    assert top.score == pytest.approx(1.0) and top.fusion_method == "rrf"


def test_max_fusion_takes_the_better_standardised_score() -> None:
    fused = fuse([m("b", 0.7), m("a", 0.3)], [m("a", 10.0), m("c", 5.0)], "max")
    # each list standardised: b tops vector, a tops keyword (z 1 each, the other's floor -1):
    # a tie on every z and on best rank, settled by the vector similarity; scaled to 0-1
    assert [c.id for c in fused] == ["b", "a", "c"]
    assert [c.score for c in fused] == pytest.approx([1.0, 1.0, 0.0])
    assert fused[0].fusion_method == "max"
    assert (fused[1].vector_rank, fused[1].keyword_rank) == (2, 1)


@pytest.fixture
async def index(tmp_path: Path) -> LocalIndex:
    emb = HashingEmbedder()
    texts = {
        "cats:0": "cats purr and sleep",
        "dogs:0": "dogs bark and fetch",
        "birds:0": "birds sing and fly south",
    }
    idx = LocalIndex.open(tmp_path / "idx", IndexSpec(emb.model_id, emb.pooling, emb.dimensions))
    vectors = await emb.embed_documents(list(texts.values()))
    await idx.upsert(
        [
            VectorRecord(i, v, {"text": t, "filename": i.split(":")[0], "folder": ""})
            for (i, t), v in zip(texts.items(), vectors, strict=True)
        ]
    )
    return idx


async def test_threshold_and_max_results(index: LocalIndex) -> None:
    emb = HashingEmbedder()
    all_hits = await search(
        emb, index, "cats purr", RetrievalOptions("vector", match_threshold=0.0)
    )
    assert all_hits[0].id == "cats:0" and len(all_hits) == 3
    strict = await search(emb, index, "cats purr", RetrievalOptions("vector", match_threshold=0.5))
    assert [c.id for c in strict] == ["cats:0"]
    one = await search(emb, index, "and", RetrievalOptions("keyword", max_num_results=1))
    assert len(one) == 1 and one[0].score == pytest.approx(1.0)
    hybrid = await search(emb, index, "birds fly", RetrievalOptions("hybrid"))
    assert hybrid[0].id == "birds:0" and hybrid[0].vector_rank == 1 and hybrid[0].keyword_rank == 1


async def test_filters_apply_before_top_k(index: LocalIndex) -> None:
    emb = HashingEmbedder()
    opts = RetrievalOptions("hybrid", match_threshold=0.0, filters={"filename": {"$ne": "cats"}})
    hits = await search(emb, index, "cats purr", opts)
    assert hits and all(c.key != "cats" for c in hits)
    assert np.isfinite([c.score for c in hits]).all()


async def test_keyword_queries_ignore_stopwords_unless_nothing_else(index: LocalIndex) -> None:
    hits = await index.keyword_query("how and why do birds fly", 10)
    assert [h.id for h in hits] == ["birds:0"]
    assert len(await index.keyword_query("and", 10)) == 3
