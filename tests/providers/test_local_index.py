from __future__ import annotations

import asyncio
import functools
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_service.errors import IndexMismatch, InvalidRequest
from rag_service.providers.filters import matches, validate_filter
from rag_service.providers.local_index import DB_NAME, LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorIndex, VectorRecord

DIM = 32
N = 3000
SPEC = IndexSpec("test-model", "mean", DIM)
FOLDERS = ["a/", "a/b/", "b/", "customer-a/x/", "customer-a/y/z/", "customer-b/"]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
POOLS: dict[str, list[Any]] = {
    "folder": [*FOLDERS, "customer-a//", "customer-a/z", "a", 3],
    "timestamp": [1_700_000_000 + d for d in (0, 500, 1000, 1500, 2000)] + ["x", True],
    "lang": ["en", "de", "fr", "", 1, None],
    "n": [0, 1, 2.5, -3, 7, "1", False],
    "flag": [True, False, 1, 0, "true"],
    "mixed": ["1", 1, 1.0, True, None, "a", 0],
}


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


@functools.cache
def make_corpus(seed: int, n: int, prefix: str = "doc") -> list[VectorRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        meta: dict[str, Any] = {
            "text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "folder": FOLDERS[int(rng.integers(len(FOLDERS)))],
            "timestamp": 1_700_000_000 + int(rng.integers(0, 2000)),
        }
        if rng.random() < 0.7:
            meta["lang"] = ["en", "de", "fr"][int(rng.integers(3))]
        if rng.random() < 0.6:
            meta["n"] = [0, 1, 2.5, -3, 7][int(rng.integers(5))]
        if rng.random() < 0.5:
            meta["flag"] = bool(rng.integers(2))
        if rng.random() < 0.8:
            meta["mixed"] = ["1", 1, 1.0, True, None, "a", 0][int(rng.integers(7))]
        vec = rng.normal(size=DIM).astype(np.float32)
        out.append(VectorRecord(f"{prefix}{i:05d}:{i % 3}", vec, meta))
    return out


def random_filter(rng: np.random.Generator) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for field in rng.choice(list(POOLS), size=int(rng.integers(1, 4)), replace=False):
        pool = POOLS[str(field)]
        ops: dict[str, Any] = {}
        for _ in range(int(rng.integers(1, 3))):
            op = str(rng.choice(["$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte"]))
            vals = [pool[int(i)] for i in rng.integers(len(pool), size=3)]
            if op in ("$in", "$nin"):
                vals = [v for v in vals if v is not None] or ["en"]
                ops[op] = vals
            elif op in ("$eq", "$ne"):
                ops[op] = vals[0]
            else:
                ops[op] = next((v for v in vals if v is not None), 5)
        f[str(field)] = ops if rng.random() < 0.8 or "$eq" not in ops else ops["$eq"]
    return f


class Oracle:
    """Brute force over the records currently stored."""

    def __init__(self, records: list[VectorRecord]) -> None:
        self.recs: dict[str, VectorRecord] = {}
        self.units: dict[str, np.ndarray] = {}
        self.upsert(records)

    def upsert(self, records: list[VectorRecord]) -> None:
        self.recs.update({r.id: r for r in records})
        self.units.update({r.id: unit(r.values) for r in records})
        self.cache: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def delete(self, ids: list[str]) -> None:
        for i in ids:
            self.recs.pop(i, None)
            self.units.pop(i, None)
        self.cache = None

    def query(self, q: np.ndarray, k: int, f: Any) -> list[tuple[str, float]]:
        nf = validate_filter(f) if f else {}
        if self.cache is None:
            ids = sorted(self.recs)
            self.cache = (ids, np.stack([self.units[i] for i in ids]), np.arange(len(ids)))
        ids, mat, rank = self.cache
        scores = mat @ unit(q)
        out: list[tuple[str, float]] = []
        for j in np.lexsort((rank, -scores)):  # best first, ties by id
            if len(out) == k:
                break
            if matches(self.recs[ids[j]].metadata, nf):
                out.append((ids[j], float(scores[j])))
        return out


async def check_against(idx: LocalIndex, oracle: Oracle, seed: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        q = rng.normal(size=DIM).astype(np.float32)
        k = int(rng.choice([1, 5, 10, 50]))
        f = None if r % 10 == 0 else random_filter(rng)
        got = [(m.id, m.score) for m in await idx.query(q, k, f)]
        want = oracle.query(q, k, f)
        assert [g[0] for g in got] == [w[0] for w in want], f
        assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)


@pytest.fixture
async def corpus(tmp_path: Path) -> AsyncIterator[tuple[LocalIndex, Oracle]]:
    records = make_corpus(1, N)
    idx = LocalIndex.open(tmp_path / "idx", SPEC)
    await idx.upsert(records[:1000])
    await idx.upsert(records[1000:])
    yield idx, Oracle(records)
    await idx.close()


async def test_query_equals_brute_force(corpus: tuple[LocalIndex, Oracle]) -> None:
    idx, oracle = corpus
    assert isinstance(idx, VectorIndex)
    assert await idx.count() == N
    await check_against(idx, oracle, seed=7, rounds=200)


async def test_mutations_and_reopen_keep_exactness(
    corpus: tuple[LocalIndex, Oracle], tmp_path: Path
) -> None:
    idx, oracle = corpus
    await check_against(idx, oracle, seed=8, rounds=20)  # builds the filter columns
    rng = np.random.default_rng(9)
    ids = sorted(oracle.recs)
    gone = [ids[int(i)] for i in rng.choice(len(ids), 600, replace=False)] + ["nope:1"]
    await idx.delete(gone)
    oracle.delete(gone)
    fresh = make_corpus(2, 400, prefix="new")
    changed = [VectorRecord(r.id, r.values, dict(r.metadata)) for r in make_corpus(3, 200)]
    await idx.upsert(fresh + changed)
    oracle.upsert(fresh + changed)
    assert await idx.count() == len(oracle.recs)
    await check_against(idx, oracle, seed=10, rounds=100)
    await idx.close()
    idx2 = LocalIndex.open(tmp_path / "idx", SPEC)
    assert idx2.list_ids() == sorted(oracle.recs)
    await check_against(idx2, oracle, seed=11, rounds=60)
    await idx2.close()


async def test_keyword_filter_equals_brute_force(corpus: tuple[LocalIndex, Oracle]) -> None:
    idx, oracle = corpus
    rng = np.random.default_rng(12)
    for _ in range(25):
        text = " ".join(rng.choice(WORDS, size=2))
        mode = str(rng.choice(["and", "or"]))
        f = random_filter(rng)
        everything = await idx.keyword_query(text, 10 * N, None, mode)  # type: ignore[arg-type]
        nf = validate_filter(f)
        want = sorted(
            ((m.id, m.score) for m in everything if matches(oracle.recs[m.id].metadata, nf)),
            key=lambda t: (-t[1], t[0]),
        )[:7]
        got = await idx.keyword_query(text, 7, f, mode)  # type: ignore[arg-type]
        assert [(m.id, m.score) for m in got] == want
        words = text.split()
        for m in everything[:50]:
            body = str(m.metadata["text"]).split()
            assert (all if mode == "and" else any)(w in body for w in words)


def rec(i: str, text: str, seed: int = 0, **meta: Any) -> VectorRecord:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return VectorRecord(i, v, {"text": text, **meta})


async def test_keyword_bm25_porter_and_modes(tmp_path: Path) -> None:
    idx = LocalIndex.open(tmp_path / "kw", SPEC)
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
    assert [h.id for h in await idx.keyword_query("running", 3)] == ["a:0"]
    assert {h.id for h in await idx.keyword_query("cat dog", 5, match_mode="or")} == {
        "a:0",
        "b:0",
        "d:0",
    }
    assert [h.id for h in await idx.keyword_query("cat dog", 5, match_mode="and")] == ["d:0"]
    assert [h.id for h in await idx.keyword_query("garden", 5, {"folder": "x"})] == []
    assert await idx.keyword_query("  ,;!  ", 5) == []
    for evil in ['"', "*", "NEAR(cat dog", "-cat", "text:cat", "AND", "cat AND", "OR OR", "'^"]:
        await idx.keyword_query(evil, 5)
        await idx.keyword_query(evil, 5, match_mode="and")
    assert [h.id for h in await idx.keyword_query('cat" AND "dog', 5, match_mode="and")] == ["d:0"]
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("cat", 5, {"text": "cat"})
    with pytest.raises(InvalidRequest):
        await idx.keyword_query("cat", 0)
    await idx.close()


async def test_keyword_trigram_and_tokenizer_switch(tmp_path: Path) -> None:
    idx = LocalIndex.open(tmp_path / "tri", SPEC, keyword_tokenizer="trigram")
    await idx.upsert([rec("a:0", "Hello world"), rec("b:0", "yellow wolf")])
    assert [h.id for h in await idx.keyword_query("ello wor", 5, match_mode="and")] == ["a:0"]
    assert await idx.keyword_query("xy", 5) == []
    for evil in ['"""', "*el*", "NEAR(", 'a"b"c']:
        await idx.keyword_query(evil, 5)
    await idx.close()
    idx = LocalIndex.open(tmp_path / "tri", SPEC, keyword_tokenizer="porter")
    assert await idx.keyword_query("ello", 5) == []
    assert [h.id for h in await idx.keyword_query("hello", 5)] == ["a:0"]
    await idx.close()


async def test_upsert_replaces_get_delete_prefix(tmp_path: Path) -> None:
    idx = LocalIndex.open(tmp_path / "u", SPEC)
    await idx.upsert([rec("item1:0", "old words here", 1), rec("item1:1", "more", 2)])
    await idx.upsert([rec("item10:0", "other", 3), rec("item2:0", "x", 4)])
    new = rec("item1:0", "fresh text", 5, folder="f/")
    await idx.upsert([new])
    assert await idx.count() == 4
    assert await idx.keyword_query("old", 5) == []
    assert [h.id for h in await idx.keyword_query("fresh", 5)] == ["item1:0"]
    top = await idx.query(new.values, 1)
    assert top[0].id == "item1:0" and abs(top[0].score - 1.0) < 1e-5
    assert top[0].metadata == {"text": "fresh text", "folder": "f/"}
    got = await idx.get(["item2:0", "missing", "item1:0"])
    assert [(g.id, g.score) for g in got] == [("item2:0", 1.0), ("item1:0", 1.0)]
    assert idx.ids_with_prefix("item1:") == ["item1:0", "item1:1"]
    assert idx.ids_with_prefix("item1") == sorted(["item1:0", "item1:1", "item10:0"])
    assert idx.ids_with_prefix("zzz") == []
    await idx.delete(["item1:1", "item1:0", "never"])
    assert idx.list_ids() == ["item10:0", "item2:0"]
    assert await idx.keyword_query("fresh", 5) == []
    assert await idx.query(new.values, 5, {"folder": "f/"}) == []
    await idx.upsert([])
    await idx.delete([])
    await asyncio.gather(*(idx.upsert([rec(f"c{i}:0", f"w{i}", i)]) for i in range(20)))
    assert await idx.count() == 22
    await idx.close()


async def test_spec_and_vector_validation(tmp_path: Path) -> None:
    idx = LocalIndex.open(tmp_path / "s", SPEC)
    with pytest.raises(IndexMismatch, match="32"):
        await idx.upsert([VectorRecord("x:0", np.ones(16, np.float32), {"text": "t"})])
    with pytest.raises(IndexMismatch):
        await idx.query(np.ones(16, np.float32), 3)
    for bad in (np.zeros(DIM), np.full(DIM, np.nan), np.full(DIM, np.inf)):
        with pytest.raises(InvalidRequest, match="finite and non-zero"):
            await idx.upsert([VectorRecord("x:0", bad.astype(np.float32), {})])
    with pytest.raises(InvalidRequest):
        await idx.upsert([VectorRecord("x:0", np.ones(DIM, np.float32), {"a": [1]})])
    with pytest.raises(InvalidRequest):
        await idx.query(np.ones(DIM, np.float32), 3, {"a": {"$bogus": 1}})
    assert await idx.count() == 0
    await idx.close()
    for other in (
        IndexSpec("other-model", "mean", DIM),
        IndexSpec("test-model", "cls", DIM),
        IndexSpec("test-model", "mean", 64),
    ):
        with pytest.raises(IndexMismatch) as e:
            LocalIndex.open(tmp_path / "s", other)
        assert "test-model" in e.value.message and other.model in e.value.message
    reopened = await LocalIndex.aopen(tmp_path / "s", SPEC)
    assert reopened.spec == SPEC
    await reopened.close()


CHILD = """
import asyncio, sys
import numpy as np
from pathlib import Path
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorRecord

async def main() -> None:
    idx = LocalIndex.open(Path(sys.argv[1]), IndexSpec("test-model", "mean", 32))
    idx._conn.execute("PRAGMA cache_size=20")  # spill uncommitted pages into the WAL
    rng = np.random.default_rng(0)
    def batch(name, n):
        vecs = rng.normal(size=(n, 32)).astype(np.float32)
        return [VectorRecord(f"{name}:{i}", vecs[i], {"text": f"{name} w{i}", "b": name})
                for i in range(n)]
    await idx.upsert(batch("A", 200))
    print("A", flush=True)
    for j in range(1000):
        await idx.upsert(batch(f"B{j}", 3000))
        print(f"B{j}", flush=True)

asyncio.run(main())
"""


ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(path: Path, script: Path) -> None:
    """Run CHILD, let it commit batch A, then SIGKILL it while it upserts big batches."""
    script.write_text(textwrap.dedent(CHILD))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "A"
    time.sleep(0.35 + 0.3 * np.random.default_rng().random())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


async def test_crash_mid_upsert_leaves_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "crash"
    await asyncio.to_thread(run_and_kill, path, tmp_path / "child.py")
    idx = LocalIndex.open(path, SPEC)
    ids = idx.list_ids()
    sizes: dict[str, int] = {}
    for i in ids:
        sizes[i.split(":")[0]] = sizes.get(i.split(":")[0], 0) + 1
    assert sizes.pop("A") == 200
    assert all(v == 3000 for v in sizes.values()), sizes
    with sqlite3.connect(path / DB_NAME) as conn:
        conn.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, chunks_fts, instance)")
        fts_rowids = {r[0] for r in conn.execute("SELECT DISTINCT doc FROM temp.v")}
        rows = dict(conn.execute("SELECT rowid, id FROM chunks").fetchall())
    assert fts_rowids == set(rows) and sorted(rows.values()) == ids
    assert len(await idx.keyword_query("A", 500)) == 200
    await idx.close()
