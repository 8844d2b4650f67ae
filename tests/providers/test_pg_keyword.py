"""`PgKeywordIndex` on a real PostgreSQL: the same ranking as LocalIndex's FTS5 BM25, the same
filter semantics as `filters.matches`, writes, isolation, hostile input, and the wiring (the
registry, VectorizeIndex over the fake Cloudflare API)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from rag_service import db
from rag_service.config import Settings
from rag_service.errors import BackendError, InvalidRequest
from rag_service.instances import InstanceConfig
from rag_service.providers.cloudflare import VectorizeIndex
from rag_service.providers.filters import matches, validate_filter
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.pg_keyword import (
    SCHEMA,
    PgKeywordIndex,
    SplitIndex,
    check_postgres,
)
from rag_service.providers.protocols import IndexSpec, VectorIndex, VectorRecord
from rag_service.registry import Providers
from tests.cloudflare.conftest import fake, make_api  # noqa: F401  (fake: the fixture)
from tests.cloudflare.fake_api import FakeCloudflare
from tests.providers.test_local_index import FOLDERS, POOLS, random_filter

DIM = 8
SPEC = IndexSpec("test-model", "mean", DIM)
WORDS = """
    river rivers running runs run runner bank banks money fish fishing boat boats water bridge
    stone stones old older city cities market night light lights garden gardens house houses
    train trains station music musical song songs quick brown fox jumps lazy dog dogs cat cats
    the a of and in to is on for with
"""
VOCAB = WORDS.split()
QUERIES = [
    "river bank",
    "running fish",
    "old stone bridge",
    "the city lights at night",
    "musical trains",
    "quick brown fox",
    "boats and water",
    "songs",
    "garden house market",
    "runner runs",
]


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def rec(i: str, text_: str, seed: int = 0, **meta: Any) -> VectorRecord:
    return VectorRecord(i, vec(seed), {"text": text_, **meta})


def corpus(seed: int, n: int) -> list[VectorRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        meta: dict[str, Any] = {
            "text": " ".join(rng.choice(VOCAB, size=int(rng.integers(3, 40)))),
            "folder": FOLDERS[int(rng.integers(len(FOLDERS)))],
            "timestamp": 1_700_000_000 + int(rng.integers(0, 2000)),
        }
        for field, p in (("lang", 0.7), ("n", 0.6), ("flag", 0.5), ("mixed", 0.8)):
            if rng.random() < p:
                pool = [v for v in POOLS[field] if field != "n" or not isinstance(v, str)]
                meta[field] = pool[int(rng.integers(len(pool)))]
        out.append(VectorRecord(f"doc{i:04d}:{i % 3}", vec(i), meta))
    return out


async def add_instances(url: str, *ids: str) -> None:
    engine = db.create_engine(url)
    async with engine.begin() as conn:
        for i in ids:
            await conn.execute(
                text(
                    "INSERT INTO instances (id, namespace, name, source, config, created_at, "
                    "modified_at) VALUES (:i, 'default', :i, '/x', '{}', now(), now())"
                ),
                {"i": i},
            )
    await engine.dispose()


@pytest.fixture
async def kw_url(pg_url: str) -> str:
    """A fresh PostgreSQL database at head, holding instances `a` and `b`."""
    engine = db.create_engine(pg_url)
    await db.upgrade(engine)
    await engine.dispose()
    await add_instances(pg_url, "a", "b")
    return pg_url


@pytest.fixture
async def pair(kw_url: str, tmp_path: Path) -> AsyncIterator[tuple[PgKeywordIndex, LocalIndex]]:
    """The same corpus in PostgreSQL (instance `a`) and in a LocalIndex."""
    records = corpus(1, 600)
    pg = await PgKeywordIndex.open(kw_url, "a")
    local = LocalIndex.open(tmp_path / "local", SPEC)
    for part in (records[:250], records[250:]):
        await pg.upsert(part)
        await local.upsert(part)
    yield pg, local
    await pg.close()
    await local.close()


def ranked(hits: list[Any]) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in hits]


async def test_ranking_equals_local_index(pair: tuple[PgKeywordIndex, LocalIndex]) -> None:
    pg, local = pair
    assert await pg.count() == await local.count() == 600
    for q in QUERIES:
        for mode in ("or", "and"):
            want = await local.keyword_query(q, 20, None, mode)  # type: ignore[arg-type]
            got = await pg.keyword_query(q, 20, None, mode)  # type: ignore[arg-type]
            assert [g.id for g in got] == [w.id for w in want], (q, mode)
            assert np.allclose([g.score for g in got], [w.score for w in want], rtol=1e-9)
            assert [g.metadata for g in got] == [w.metadata for w in want]


async def test_and_or_modes(kw_url: str) -> None:
    idx = await PgKeywordIndex.open(kw_url, "a")
    await idx.upsert(
        [
            rec("a:0", "the cat runs in the garden every day"),
            rec("b:0", "the dog sleeps in the garden"),
            rec("c:0", "a zeppelin over the garden"),
            rec("d:0", "the cat and the dog"),
        ]
    )
    hits = await idx.keyword_query("zeppelin garden", 4)
    assert hits[0].id == "c:0" and all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.id for h in await idx.keyword_query("running", 3)] == ["a:0"]  # porter stems
    assert {h.id for h in await idx.keyword_query("cat dog", 5, match_mode="or")} == {
        "a:0",
        "b:0",
        "d:0",
    }
    assert [h.id for h in await idx.keyword_query("cat dog", 5, match_mode="and")] == ["d:0"]
    assert [h.id for h in await idx.keyword_query("cat zebra", 5, match_mode="and")] == []
    hits = await idx.keyword_query("cat zebra", 5, match_mode="or")
    assert [h.id for h in hits] == ["d:0", "a:0"]  # the shorter chunk first
    assert len(await idx.keyword_query("garden", 2)) == 2  # top_k
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("cat", 0)
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("cat", 5, match_mode="xor")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("cat", 5, {"text": "cat"})
    await idx.close()


async def test_stopwords_as_local_index(kw_url: str, tmp_path: Path) -> None:
    """Stopwords are dropped from a query unless nothing else is left (then they are searched,
    as LocalIndex does); a query with no word at all finds nothing."""
    records = [rec("a:0", "the cat"), rec("b:0", "to be or not to be"), rec("c:0", "dog")]
    pg = await PgKeywordIndex.open(kw_url, "a")
    local = LocalIndex.open(tmp_path / "l", SPEC)
    await pg.upsert(records)
    await local.upsert(records)
    for q in ("the", "to be", "the dog", "of and the", "the cat"):
        for mode in ("or", "and"):
            got = await pg.keyword_query(q, 5, None, mode)  # type: ignore[arg-type]
            want = await local.keyword_query(q, 5, None, mode)  # type: ignore[arg-type]
            assert [g.id for g in got] == [w.id for w in want], q
    assert [h.id for h in await pg.keyword_query("the dog", 5, match_mode="and")] == ["c:0"]
    for empty in ("", "   ", ",;!?", "_", "---"):
        assert await pg.keyword_query(empty, 5) == []
    await pg.close()
    await local.close()


async def test_filters_equal_matches(pair: tuple[PgKeywordIndex, LocalIndex]) -> None:
    """Filtered top-k: the unfiltered ranking cut by `filters.matches`, for random filters
    over mixed-type fields (every operator), and as LocalIndex gives it."""
    pg, local = pair
    everything = {
        q: await pg.keyword_query(q, 10_000, None, "or") for q in ("river bank", "dog", "song")
    }
    rng = np.random.default_rng(7)
    for _ in range(60):
        q = str(rng.choice(list(everything)))
        f = random_filter(rng)
        nf = validate_filter(f)
        want = [(h.id, h.score) for h in everything[q] if matches(h.metadata, nf)][:7]
        got = await pg.keyword_query(q, 7, f, "or")
        assert ranked(got) == want, f
        assert [h.id for h in await local.keyword_query(q, 7, f, "or")] == [w[0] for w in want]


async def test_each_filter_operator(kw_url: str) -> None:
    idx = await PgKeywordIndex.open(kw_url, "a")
    docs = [
        rec("1", "word", folder="docs/", n=1, flag=True, lang="en"),
        rec("2", "word", folder="docs/api/", n=2.5, flag=False, lang=None),
        rec("3", "word", folder="docs0/", n=-3, lang="de"),
        rec("4", "word", folder="doc/", n="2", flag=1),
        rec("5", "word", folder="other/", n=10**20),
        rec("6", "word", folder="x" * 70 + "/deep"),  # filters see its first 64 bytes
    ]
    await idx.upsert(docs)
    metas = {d.id: d.metadata for d in docs}

    async def ids(f: dict[str, Any]) -> set[str]:
        got = {h.id for h in await idx.keyword_query("word", 50, f)}
        assert got == {i for i, m in metas.items() if matches(m, validate_filter(f))}, f
        return got

    assert await ids({"folder": "docs/"}) == {"1"}
    assert await ids({"folder": {"$ne": "docs/"}}) == {"2", "3", "4", "5", "6"}
    assert await ids({"n": {"$eq": 2.5}}) == {"2"}
    assert await ids({"n": {"$eq": 1.0}}) == {"1"}  # 1 == 1.0; the string "2" is no number
    assert await ids({"n": {"$gt": 1}}) == {"2", "5"}
    assert await ids({"n": {"$gte": 1}}) == {"1", "2", "5"}
    assert await ids({"n": {"$lt": 1}}) == {"3"}
    assert await ids({"n": {"$lte": 2.5, "$gt": -3}}) == {"1", "2"}
    assert await ids({"n": {"$gte": "1"}}) == {"4"}  # strings compare with strings only
    assert await ids({"flag": True}) == {"1"}  # a boolean is not the number 1
    assert await ids({"flag": 1}) == {"4"}
    assert await ids({"flag": {"$ne": True}}) == {"2", "3", "4", "5", "6"}  # missing: not equal
    assert await ids({"lang": None}) == {"2"}  # stored null, not missing
    assert await ids({"lang": {"$ne": None}}) == {"1", "3", "4", "5", "6"}
    assert await ids({"lang": {"$in": ["en", "de"]}}) == {"1", "3"}
    assert await ids({"lang": {"$nin": ["en", "de"]}}) == {"2", "4", "5", "6"}
    assert await ids({"n": {"$in": [1, "2", 99]}}) == {"1", "4"}
    assert await ids({"n": {"$lt": True}}) == set()  # a boolean bound: nothing compares
    # A folder and everything under it: the prefix as a string range (Vectorize's idiom).
    assert await ids({"folder": {"$gte": "docs/", "$lt": "docs0"}}) == {"1", "2"}
    assert await ids({"folder": {"$gte": "d", "$lt": "e"}}) == {"1", "2", "3", "4"}
    assert await ids({"folder": "x" * 64}) == {"6"}
    assert await ids({"folder": {"$gt": "docs/", "$lte": "docs/api/"}, "n": 2.5}) == {"2"}
    assert await ids({"folder": {"$in": ["a'b", 'q"', "\\"]}}) == set()
    await idx.close()


async def test_upsert_replaces_delete_and_count(kw_url: str) -> None:
    idx = await PgKeywordIndex.open(kw_url, "a")
    await idx.upsert([rec("item1:0", "old words here"), rec("item1:1", "more words")])
    await idx.upsert([rec("item1:0", "fresh text", folder="f/"), rec("x:0", "a"), rec("x:0", "b")])
    assert await idx.count() == 3
    assert await idx.keyword_query("old", 5) == []
    (hit,) = await idx.keyword_query("fresh", 5)
    assert hit.id == "item1:0" and hit.metadata == {"text": "fresh text", "folder": "f/"}
    assert [h.metadata["text"] for h in await idx.keyword_query("b", 5)] == ["b"]  # last wins
    got = await idx.get(["x:0", "missing", "item1:0"])
    assert [(g.id, g.score) for g in got] == [("x:0", 1.0), ("item1:0", 1.0)]
    await idx.delete(["item1:1", "item1:0", "never", "item1:0"])
    assert await idx.count() == 1
    assert await idx.keyword_query("fresh words", 5) == []
    await idx.upsert([])
    await idx.delete([])
    with pytest.raises(InvalidRequest):
        await idx.upsert([rec("", "x")])
    with pytest.raises(InvalidRequest):
        await idx.upsert([VectorRecord("y", vec(0), {"text": "x", "bad": float("nan")})])
    # Totals stay exact under concurrent writers (two "hosts", one instance).
    other = await PgKeywordIndex.open(kw_url, "a")
    await asyncio.gather(
        *(
            (idx if i % 2 else other).upsert([rec(f"c{i % 7}:0", " ".join(["w"] * i))])
            for i in range(1, 30)
        ),
        *(other.delete([f"c{i}:0"]) for i in range(3)),
    )
    engine = db.create_engine(kw_url)
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text(f"SELECT count(*), sum(doc_len) FROM {SCHEMA}.chunks WHERE instance_id='a'")
            )
        ).one()
        totals = (
            await conn.execute(
                text(f"SELECT docs, tokens FROM {SCHEMA}.totals WHERE instance_id='a'")
            )
        ).one()
    await engine.dispose()
    assert tuple(stored) == tuple(totals)
    await other.close()
    await idx.close()
    with pytest.raises(BackendError, match="closed"):
        await idx.keyword_query("x", 1)


async def test_instances_are_isolated_and_deleted_with_their_row(kw_url: str) -> None:
    a = await PgKeywordIndex.open(kw_url, "a")
    b = await PgKeywordIndex.open(kw_url, "b")
    await a.upsert([rec("same:0", "apple orchard"), rec("a:1", "apple pie")])
    await b.upsert([rec("same:0", "banana boat")] + [rec(f"b:{i}", "filler") for i in range(50)])
    assert [h.id for h in await a.keyword_query("apple", 5)] == ["a:1", "same:0"]
    assert await a.keyword_query("banana", 5) == []
    assert [h.metadata["text"] for h in await b.keyword_query("banana", 5)] == ["banana boat"]
    assert (await a.count(), await b.count()) == (2, 51)
    # Another instance's chunks change nothing of this one's scores (N, avgdl and df are its own).
    alone = await a.keyword_query("apple orchard", 5)
    await b.upsert([rec(f"b2:{i}", "apple apple apple") for i in range(20)])
    assert ranked(await a.keyword_query("apple orchard", 5)) == ranked(alone)
    await b.delete(["same:0"])
    assert [h.id for h in await a.get(["same:0"])] == ["same:0"]
    with pytest.raises(BackendError, match="not in the database"):
        await PgKeywordIndex.open(kw_url, "nope")
    engine = db.create_engine(kw_url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM instances WHERE id = 'b'"))
        left = await conn.execute(text(f"SELECT DISTINCT instance_id FROM {SCHEMA}.chunks"))
        assert left.scalars().all() == ["a"]
    await engine.dispose()
    with pytest.raises(BackendError, match="not in the database"):
        await b.upsert([rec("z", "zz")])
    await a.close()
    await b.close()


HOSTILE = [
    "'",
    "''",
    '"',
    "\\",
    "\\'",
    "it's",
    "a\\b",
    "!&|():*",
    "cat & dog | !fish",
    "(cat",
    "cat:*",
    "cat:A",
    "<-> <2> cat <-> dog",
    "'cat' & 'dog'",
    "NEAR(cat dog",
    "cat\x00dog",
    "\x00",
    "\x01\x02\x1f\x7f\x9f",
    "tab\there\nnewline",
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "\ud800 lone surrogate \udfff",
    "emoji \U0001f600 text",
    "x" * 3000,
    "\u0000\u0000'\\''",
    " ".join(f"w{i}" for i in range(200)),
]


async def test_hostile_text_never_raises(kw_url: str) -> None:
    idx = await PgKeywordIndex.open(kw_url, "a")
    records = [rec(f"h:{i}", s, i, note=s) for i, s in enumerate(HOSTILE)]
    await idx.upsert(records)
    huge = " ".join(f"t{i}x" * 40 for i in range(6000))  # ~1 MB of distinct long words
    await idx.upsert([rec("huge:0", huge)])
    assert await idx.count() == len(HOSTILE) + 1
    for i, s in enumerate(HOSTILE):
        for mode in ("or", "and"):
            await idx.keyword_query(s, 5, None, mode)  # type: ignore[arg-type]
            value = re.sub(r"[\x00-\x1f\x7f-\x9f]", "", s)[:20] or "x"
            await idx.keyword_query(s, 5, {"note": {"$in": [value]}})
        (got,) = await idx.get([f"h:{i}"])
        assert got.metadata["text"] == s  # stored as written, NUL and surrogates included
    assert "h:5" in {h.id for h in await idx.keyword_query("it's", 5)}
    assert "h:6" in {h.id for h in await idx.keyword_query("a\\b", 5, match_mode="and")}
    assert "h:15" in {h.id for h in await idx.keyword_query("dog", 30)}
    assert "h:22" in {h.id for h in await idx.keyword_query("x" * 3000, 5)}
    assert "h:19" in {h.id for h in await idx.keyword_query("CAFE", 5)}  # folded, unaccented
    assert [h.id for h in await idx.keyword_query("t1x" * 40, 5)] == ["huge:0"]
    for bad in ["\x00", "a\x00b"]:
        assert await idx.get([bad]) == []
        await idx.delete([bad])
        with pytest.raises(InvalidRequest):
            await idx.upsert([rec(bad, "x")])
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("x", 5, {"note": {"$eq": "a\x00"}})  # refused by validation
    await idx.close()


async def test_trigram_tokenizer_and_switch(kw_url: str, tmp_path: Path) -> None:
    records = [
        rec("a:0", "Hello world"),
        rec("b:0", "yellow wolf"),
        rec("c:0", "HELLO hello jello"),
        rec("d:0", "ab'c \\x it's"),
    ]
    pg = await PgKeywordIndex.open(kw_url, "a", "trigram")
    local = LocalIndex.open(tmp_path / "tri", SPEC, keyword_tokenizer="trigram")
    await pg.upsert(records)
    await local.upsert(records)
    for q in ("ello wor", "ello", "llo", "xy", "wolf", "'s", "it's", "b'c", "\\x i", "ELL"):
        for mode in ("or", "and"):
            got = await pg.keyword_query(q, 5, None, mode)  # type: ignore[arg-type]
            want = await local.keyword_query(q, 5, None, mode)  # type: ignore[arg-type]
            assert [g.id for g in got] == [w.id for w in want], (q, mode)
            assert np.allclose([g.score for g in got], [w.score for w in want], rtol=1e-9)
    assert [h.id for h in await pg.keyword_query("ello wor", 5, match_mode="and")] == ["a:0"]
    await pg.close()
    # Reopened with porter: every chunk's terms are made again.
    pg = await PgKeywordIndex.open(kw_url, "a", "porter")
    assert await pg.keyword_query("ello", 5) == []
    assert [h.id for h in await pg.keyword_query("hello", 5)] == ["c:0", "a:0"]
    assert await pg.count() == 4
    await pg.close()
    await local.close()


async def test_postgres_is_required(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="must be PostgreSQL"):
        check_postgres(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(InvalidRequest, match="must be PostgreSQL"):
        await PgKeywordIndex.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "a")
    with pytest.raises(ValidationError, match="RAGD_KEYWORD_INDEX=postgres"):
        Settings(data_dir=tmp_path, keyword_index="postgres")


async def test_registry_splits_local_index(kw_url: str, tmp_path: Path) -> None:
    """The local backend with RAGD_KEYWORD_INDEX=postgres: vectors in the LocalIndex, keyword
    search in PostgreSQL, writes to both."""
    settings = Settings(data_dir=tmp_path / "data", database_url=kw_url, keyword_index="postgres")
    providers = Providers(settings)
    index = await providers._open_index("a", InstanceConfig(), SPEC)
    assert isinstance(index, SplitIndex) and isinstance(index, VectorIndex)
    await index.upsert([rec("r:0", "river bank", 1), rec("r:1", "money bank", 2)])
    assert [h.id for h in await index.keyword_query("river", 5)] == ["r:0"]
    assert (await index.query(vec(2), 1))[0].id == "r:1"
    assert await index.count() == 2 and await index.keyword.count() == 2
    await index.delete(["r:0"])
    assert await index.keyword_query("river", 5) == []
    assert [m.id for m in await index.get(["r:0", "r:1"])] == ["r:1"]
    await index.close()


async def test_vectorize_index_with_postgres_keyword_store(
    fake: FakeCloudflare,  # noqa: F811
    kw_url: str,
    tmp_path: Path,
) -> None:
    api = make_api(fake)
    spec = IndexSpec("@cf/baai/bge-small-en-v1.5", "cls", DIM)
    keyword = await PgKeywordIndex.open(kw_url, "a")
    index = await VectorizeIndex.open(api, "ragd-a", spec, tmp_path / "unused", keyword=keyword)
    texts = ["green tea brewing", "sourdough bulk fermentation", "bicycle tyre repair"]
    folder = ["docs/", "docs/recipes/", "other/"]
    await index.upsert(
        [rec(f"item:{i}", texts[i % 3], i + 1, folder=folder[i % 3]) for i in range(12)]
    )
    hits = await index.keyword_query("sourdough fermentation", 5, match_mode="and")
    assert {h.id for h in hits} == {"item:1", "item:4", "item:7", "item:10"}
    prefix = {"folder": {"$gte": "docs/", "$lt": "docs0"}}
    assert {h.id for h in await index.keyword_query("tea sourdough bicycle", 20, prefix)} == {
        f"item:{i}" for i in range(12) if i % 3 != 2
    }
    assert await index.settle(timeout=5)
    assert await index.count() == 12
    await index.delete(["item:1", "item:4"])
    assert {h.id for h in await index.keyword_query("sourdough", 5)} == {"item:7", "item:10"}
    assert await keyword.count() == 10
    assert not (tmp_path / "unused").exists()  # no keyword file on this host
    await index.close()
    # Another host: the same keyword index, nothing local.
    again = await PgKeywordIndex.open(kw_url, "a")
    assert {h.id for h in await again.keyword_query("sourdough", 5)} == {"item:7", "item:10"}
    await again.close()
    await api.aclose()
