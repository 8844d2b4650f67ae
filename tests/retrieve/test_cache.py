"""The similarity cache: shingles, MinHash/LSH candidates, the four levels, TTL, scopes,
invalidation by item and the check of the chunks behind an answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import Settings
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorRecord
from rag_service.retrieve.cache import (
    BANDS,
    DEFAULT_TTL,
    THRESHOLDS,
    AnswerCache,
    CacheThreshold,
    band_keys,
    chunks_unchanged,
    jaccard,
    minhash,
    shingles,
)
from rag_service.retrieve.search import ScoredChunk
from rag_service.runtime import Runtime

CacheFor = Callable[..., AnswerCache]

WEATHER = "What's the weather like today?"
T0 = 1_700_000_000.0


@pytest.fixture
async def cache_for(settings: Settings) -> AsyncIterator[CacheFor]:
    """Caches of instance `docs` in a real database (SQLite and PostgreSQL)."""
    async with Runtime(settings) as rt:
        await rt.instances.ensure("docs", str(settings.data_dir))
        yield lambda ttl=DEFAULT_TTL: AnswerCache(rt.sessions, "docs", ttl)


def chunk(id_: str, text: str) -> ScoredChunk:
    return ScoredChunk(
        id=id_,
        text=text,
        score=0.8,
        metadata={"text": text, "filename": f"{id_.split(':')[0]}.md", "item_id": id_[:-2]},
        vector_score=0.8,
        vector_rank=1,
    )


def test_shingles_are_words_and_word_pairs_with_contractions_spelled_out() -> None:
    assert shingles("What's the  weather?") == {
        "what",
        "is",
        "the",
        "weather",
        "what is",
        "is the",
        "the weather",
    }
    assert shingles("I can\u2019t") == shingles("i can not")
    assert jaccard(shingles(WEATHER), shingles("What is the weather like today")) == 1.0
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_minhash_estimates_jaccard_and_lsh_buckets_similar_prompts_together() -> None:
    a, b = (
        shingles("how long does sourdough bulk fermentation take"),
        shingles("how long does sourdough bulk fermentation usually take"),
    )
    sa, sb = minhash(a), minhash(b)
    assert len(sa) == BANDS * 2 and minhash(a) == sa  # deterministic across calls
    estimate = sum(x == y for x, y in zip(sa, sb, strict=True)) / len(sa)
    assert estimate == pytest.approx(jaccard(a, b), abs=0.15)
    shared = set(band_keys("s", sa)) & set(band_keys("s", sb))
    assert shared  # candidates for each other
    assert not set(band_keys("s", sa)) & set(band_keys("other scope", sa))
    unrelated = minhash(shingles("planets of the solar system"))
    assert not set(band_keys("s", sa)) & set(band_keys("s", unrelated))


# Which levels reuse an answer to WEATHER (Cloudflare's own examples first; the lexical match
# finds the reworded ones only at the looser levels, and "Give me the forecast" at none).
@pytest.mark.parametrize(
    ("prompt", "levels"),
    [
        ("What is the weather like today", 4),
        ("What's the weather like today in Paris?", 2),
        ("What's the weather like tomorrow?", 2),
        ("How's the weather today?", 1),
        ("Tell me today's weather", 0),
        ("Give me the forecast", 0),
    ],
)
async def test_the_four_levels(cache_for: CacheFor, prompt: str, levels: int) -> None:
    cache = cache_for()
    await cache.store("s", WEATHER, "m", "Sunny.", [chunk("w:0", "sunny")], now=T0)
    order: list[CacheThreshold] = [
        "super_strict_match",
        "close_enough",
        "flexible_friend",
        "anything_goes",
    ]
    hits = [await cache.lookup("s", prompt, level, now=T0 + 1) for level in order]
    assert [h is not None for h in hits] == [i >= 4 - levels for i in range(4)]
    assert list(THRESHOLDS) == order


async def test_a_hit_returns_the_answer_and_its_chunks(cache_for: CacheFor) -> None:
    cache = cache_for()
    sources = [chunk("bread:0", "Knead the dough."), chunk("bread:1", "Bake it hot.")]
    await cache.store("s", "How do I bake bread?", "m", "Knead, then bake.", sources, now=T0)
    await cache.store("s", "How do I bake bread at home?", "m", "Other.", sources[:1], now=T0 + 5)
    hit = await cache.lookup("s", "how do I bake bread", "close_enough", now=T0 + 10)
    assert hit is not None and hit.answer == "Knead, then bake." and hit.similarity == 1.0
    assert hit.model == "m"
    assert hit.chunks == sources and hit.created == T0
    assert await cache.lookup("other", "How do I bake bread?", "anything_goes") is None


async def test_entries_expire_after_the_ttl(cache_for: CacheFor) -> None:
    assert DEFAULT_TTL == 48 * 3600
    cache = cache_for(100)
    await cache.store("s", "opening hours", "m", "9 to 5", [chunk("h:0", "9-5")], now=T0)
    assert await cache.lookup("s", "opening hours", "close_enough", now=T0 + 99)
    assert await cache.lookup("s", "opening hours", "close_enough", now=T0 + 101) is None
    await cache.store("s", "other", "m", "x", [chunk("o:0", "x")], now=T0 + 200)  # purges
    assert await cache.lookup("s", "opening hours", "close_enough", now=T0) is None


async def test_invalidating_an_item_drops_the_answers_grounded_on_it(cache_for: CacheFor) -> None:
    cache = cache_for()
    assert await cache.invalidate_items(["bread"]) == 0  # nothing cached yet
    await cache.store("s", "bake bread", "m", "a", [chunk("bread:0", "x"), chunk("oven:0", "y")])
    await cache.store("s", "water tomatoes", "m", "b", [chunk("garden:0", "z")])
    assert await cache.invalidate_items(["oven", "nothing"]) == 1
    assert await cache.lookup("s", "bake bread", "close_enough") is None
    assert await cache.lookup("s", "water tomatoes", "close_enough") is not None
    many = [f"item-{i}" for i in range(1200)] + ["garden"]
    assert await cache.invalidate_items(many) == 1
    await cache.store("s", "bake bread", "m", "a", [chunk("bread:0", "x")])
    assert await cache.purge() == 1 and await cache.purge() == 0


async def test_chunks_unchanged_reads_the_index(tmp_path: Path, cache_for: CacheFor) -> None:
    index = LocalIndex.open(tmp_path / "idx", IndexSpec("m", "mean", 2))
    vector = np.array([1.0, 0.0], dtype=np.float32)
    await index.upsert([VectorRecord("bread:0", vector, {"text": "Knead the dough."})])
    cache = cache_for()
    await cache.store("s", "bake", "m", "a", [chunk("bread:0", "Knead the dough.")])
    hit = await cache.lookup("s", "bake", "super_strict_match")
    assert hit is not None and await chunks_unchanged(index, hit)
    await index.upsert([VectorRecord("bread:0", vector, {"text": "Rest the dough."})])
    assert not await chunks_unchanged(index, hit)
    await index.delete(["bread:0"])
    assert not await chunks_unchanged(index, hit)
    await index.close()
