"""`LocalIndex` with its HNSW graph (threshold lowered): the same answers as exact search, the graph
saved beside the SQLite file, loaded when current and rebuilt when stale, missing or corrupt."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_service.benchmarks import index as index_bench
from rag_service.config import Settings
from rag_service.providers import ann, local_index
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import VectorRecord
from tests.providers.test_local_index import (
    DIM,
    SPEC,
    N,
    Oracle,
    check_against,
    make_corpus,
    random_filter,
)

THRESHOLD = 1000


@pytest.fixture(autouse=True)
def small_data_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 3,000 vectors: a graph dense and a search list wide enough to find every true
    neighbour, filters answered through the graph unless they admit under 50 rows, and many
    small chunks per build so that writes land in the middle of one."""
    monkeypatch.setattr(ann, "CONNECTIVITY", 32)
    monkeypatch.setattr(ann, "EXPANSION_ADD", 256)
    monkeypatch.setattr(ann, "EXPANSION_SEARCH", 400)
    monkeypatch.setattr(local_index, "_ANN_EXACT_ROWS", 50)
    monkeypatch.setattr(local_index, "_ANN_CHUNK", 128)


class Spy:
    """Counts the queries that the graph answered (not handed back to exact search)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answered = 0
        real = LocalIndex._ann_top

        def counted(idx: LocalIndex, *args: object) -> object:
            out = real(idx, *args)  # type: ignore[arg-type]
            self.answered += out is not None
            return out

        monkeypatch.setattr(LocalIndex, "_ann_top", counted)


def slow_graph(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Each addition to a graph takes `seconds` longer (a build of many chunks takes a while)."""
    add = ann.Hnsw.add

    def slow_add(graph: ann.Hnsw, *args: Any) -> None:
        time.sleep(seconds)
        add(graph, *args)

    monkeypatch.setattr(ann.Hnsw, "add", slow_add)


def scan_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph's searches compare the query with every vector it holds (usearch's exact mode),
    not only those its links lead to. Its answers then depend on what it holds (keys and 8-bit
    vectors), not on how well removals and re-additions left its links, so equality with exact
    search shows that every write reached it. (How well the links serve: the tests above on
    fresh graphs, and `ragd bench index` at scale.)"""

    def scan(graph: ann.Hnsw, query: np.ndarray, count: int) -> np.ndarray:
        found = graph._index.search(query, min(count, len(graph)), threads=1, exact=True)
        return np.asarray(found.keys).astype(np.int64)

    monkeypatch.setattr(ann.Hnsw, "search", scan)


async def check_close(
    idx: LocalIndex, oracle: Oracle, queries: list[tuple[np.ndarray, int, Any]]
) -> None:
    """What a graph that navigates (not scans) must give: every result passes the filter, with
    its exact score, best first, as many as exact search finds; and at least 98 % of exact
    search's top-k overall (an HNSW graph may miss a neighbour; which one varies run to run,
    as usearch builds with every core)."""
    hits = wanted = 0
    for q, k, f in queries:
        got = [(m.id, m.score) for m in await idx.query(q, k, f)]
        admitted = dict(oracle.query(q, N + 1000, f))  # every row the filter admits
        want = oracle.query(q, k, f)
        assert len(got) == len(want), f
        assert all(cid in admitted for cid, _ in got), f
        assert np.allclose([s for _, s in got], [admitted[c] for c, _ in got], atol=1e-5)
        assert all(a[1] >= b[1] - 1e-6 for a, b in itertools.pairwise(got)), f
        hits += len({c for c, _ in got} & {c for c, _ in want})
        wanted += len(want)
    assert hits >= 0.98 * wanted, (hits, wanted)


def random_queries(seed: int, rounds: int) -> list[tuple[Any, int, Any]]:
    """`check_against`'s queries: random vectors, k in 1/5/10/50, random filters."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rounds):
        q = rng.normal(size=DIM).astype(np.float32)
        k = int(rng.choice([1, 5, 10, 50]))
        out.append((q, k, None if r % 10 == 0 else random_filter(rng)))
    return out


def open_ann(path: Path, threshold: int | None = THRESHOLD) -> LocalIndex:
    return LocalIndex.open(path, SPEC, ann_threshold=threshold)


@pytest.fixture
async def corpus(tmp_path: Path) -> AsyncIterator[tuple[LocalIndex, Oracle]]:
    records = make_corpus(1, N)
    idx = open_ann(tmp_path / "idx")
    await idx.upsert(records[:500])
    assert not await idx.wait_ann()  # under the threshold: exact, no graph
    await idx.upsert(records[500:])
    assert await idx.wait_ann()  # crossing it started a build
    yield idx, Oracle(records)
    await idx.close()


def graph_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("ann."))


async def test_graph_answers_as_exact_search(
    corpus: tuple[LocalIndex, Oracle], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    idx, oracle = corpus
    await check_close(idx, oracle, random_queries(seed=11, rounds=150))
    assert spy.answered >= 40  # most random filters admit no row at all (then: exact)


@pytest.mark.parametrize("overfetch", [1.5, 0.05])  # 0.05: the first fetch falls short, widen
async def test_filters_stay_exact(
    corpus: tuple[LocalIndex, Oracle], monkeypatch: pytest.MonkeyPatch, overfetch: float
) -> None:
    """Candidates are filtered by the exact masks, fetched until enough pass; a filter that
    admits few rows is answered exactly."""
    monkeypatch.setattr(local_index, "_ANN_OVERFETCH", overfetch)
    spy = Spy(monkeypatch)
    idx, oracle = corpus
    broad: list[dict[str, Any]] = [
        {"folder": "a/"},
        {"folder": {"$in": ["a/", "customer-b/"]}},
        {"folder": {"$ne": "b/"}, "lang": {"$in": ["en", "de"]}},
        {"timestamp": {"$gte": 1_700_001_500}},
        {"lang": "en", "timestamp": {"$lt": 1_700_001_000}},
    ]
    narrow: list[dict[str, Any]] = [{"folder": "a/", "timestamp": {"$lt": 1_700_000_040}}]
    rng = np.random.default_rng(21)
    queries = [(rng.normal(size=DIM).astype(np.float32), k, f) for f in broad for k in (1, 10, 50)]
    await check_close(idx, oracle, queries)
    assert spy.answered == 3 * len(broad)
    for k in (1, 10, 50):  # answered exactly: the same rows in the same order
        q = rng.normal(size=DIM).astype(np.float32)
        got = [m.id for m in await idx.query(q, k, narrow[0])]
        assert got == [c for c, _ in oracle.query(q, k, narrow[0])]
    assert spy.answered == 3 * len(broad)


async def test_exact_below_threshold_and_with_no_threshold(tmp_path: Path) -> None:
    records = make_corpus(1, N)
    for name, threshold in (("above", N + 1), ("off", None), ("zero", 0)):
        idx = open_ann(tmp_path / name, threshold)
        await idx.upsert(records)
        assert not await idx.wait_ann()
        await check_against(idx, Oracle(records), seed=3, rounds=10)
        await idx.close()
        assert graph_files(tmp_path / name) == []


async def test_writes_follow_the_graph(
    corpus: tuple[LocalIndex, Oracle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates move vectors, deletes drop them, new rows join: answers stay exact."""
    scan_the_graph(monkeypatch)
    spy = Spy(monkeypatch)
    idx, oracle = corpus
    rng = np.random.default_rng(5)
    moved = [
        VectorRecord(r.id, rng.normal(size=DIM).astype(np.float32), r.metadata)
        for r in make_corpus(1, N)[::7]
    ]
    await idx.upsert(moved)
    oracle.upsert(moved)
    gone = [r.id for r in make_corpus(1, N)[1::5]]
    await idx.delete(gone)
    oracle.delete(gone)
    fresh = make_corpus(2, 400, prefix="new")
    await idx.upsert(list(fresh))
    oracle.upsert(list(fresh))
    await check_against(idx, oracle, seed=12, rounds=80)
    for r in [r for r in moved if r.id not in gone][:20]:  # its own nearest neighbour again
        assert (await idx.query(r.values, 1))[0].id == r.id
    for cid in gone[:20]:
        q = make_corpus(1, N)[int(cid[3:8])].values
        assert cid not in {m.id for m in await idx.query(q, 10)}
    assert spy.answered > 40


async def test_saved_at_close_and_loaded_when_current(
    corpus: tuple[LocalIndex, Oracle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_the_graph(monkeypatch)
    idx, oracle = corpus
    await idx.delete([r.id for r in make_corpus(1, N)[:300]])
    oracle.delete([r.id for r in make_corpus(1, N)[:300]])
    await idx.close()
    assert graph_files(tmp_path / "idx") == ["ann.json", "ann.usearch"]
    again = open_ann(tmp_path / "idx")
    try:
        assert await again.wait_ann()
        assert again.ann_stats["loaded"] is True
        await check_against(again, oracle, seed=13, rounds=60)
    finally:
        await again.close()


async def test_rebuilt_when_stale_missing_or_corrupt(
    corpus: tuple[LocalIndex, Oracle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_the_graph(monkeypatch)
    idx, oracle = corpus
    path = tmp_path / "idx"
    await idx.close()
    # Stale: written by an index that does not keep the graph (ANN off).
    plain = open_ann(path, None)
    late = make_corpus(3, 50, prefix="late")
    await plain.upsert(list(late))
    await plain.delete([r.id for r in make_corpus(1, N)[:100]])
    oracle.upsert(list(late))
    oracle.delete([r.id for r in make_corpus(1, N)[:100]])
    await plain.close()
    for damage in ("stale", "missing", "corrupt", "json"):
        if damage == "missing":
            (path / ann.ANN_FILE).unlink()
        elif damage == "corrupt":
            (path / ann.ANN_FILE).write_bytes(b"not a graph" * 100)
        elif damage == "json":
            (path / ann.ANN_META).write_text("{")
        again = open_ann(path)
        try:
            assert await again.wait_ann()
            assert again.ann_stats["loaded"] is False, damage
            await check_against(again, oracle, seed=14, rounds=30)
            assert (await again.query(late[0].values, 1))[0].id == late[0].id
        finally:
            await again.close()
        reopened = open_ann(path)  # the rebuilt graph was saved: loaded now
        assert await reopened.wait_ann()
        assert reopened.ann_stats["loaded"] is True
        await reopened.close()


async def test_writes_during_a_build_are_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upserts and deletes while the graph is built (off the lock, chunk by chunk) all reach it:
    every catch-up round runs off the lock until nothing is left."""
    scan_the_graph(monkeypatch)
    monkeypatch.setattr(local_index, "_ANN_CATCH_UP", 0)
    monkeypatch.setattr(local_index, "_ANN_CHUNK", 16)
    slow_graph(monkeypatch, 0.005)
    records = make_corpus(1, N)
    plain = open_ann(tmp_path / "w", None)
    await plain.upsert(records)
    await plain.close()
    idx = open_ann(tmp_path / "w")  # no graph file: a build starts now
    oracle = Oracle(records)
    rng = np.random.default_rng(8)
    for step in range(30):
        batch = [
            VectorRecord(f"doc{int(i):05d}:{int(i) % 3}", rng.normal(size=DIM), {"text": "x"})
            for i in rng.integers(0, N, 20)
        ]
        batch += list(make_corpus(4 + step, 5, prefix=f"s{step}-"))
        await idx.upsert(batch)
        oracle.upsert(batch)
        doomed = [r.id for r in records[step * 40 : step * 40 + 10]]
        await idx.delete(doomed)
        oracle.delete(doomed)
        assert step > 0 or idx._ann is None  # the build is still going
        await asyncio.sleep(0)
    assert await idx.wait_ann()
    assert idx.ann_stats["loaded"] is False
    await check_against(idx, oracle, seed=15, rounds=80)
    await idx.close()


async def test_rebuilt_once_worn_by_removals(
    corpus: tuple[LocalIndex, Oracle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed and replaced vectors stay in the graph as waypoints; past a share of the graph, a
    new one is built in the background while the old one keeps answering."""
    scan_the_graph(monkeypatch)
    monkeypatch.setattr(local_index, "_ANN_REBUILD", 0.1)
    idx, oracle = corpus
    assert idx._ann is not None and idx.ann_stats["rebuilt"] is False
    rng = np.random.default_rng(6)
    records = make_corpus(1, N)
    for start in range(0, 400, 100):  # 400 of 3,000 replaced: a rebuild starts after 300
        moved = [
            VectorRecord(r.id, rng.normal(size=DIM).astype(np.float32), r.metadata)
            for r in records[start : start + 100]
        ]
        await idx.upsert(moved)
        oracle.upsert(moved)
        await check_against(idx, oracle, seed=start, rounds=5)
    assert await idx.wait_ann()
    assert idx.ann_stats["rebuilt"] is True
    assert idx._ann.churn < 100
    await check_against(idx, oracle, seed=16, rounds=40)


async def test_a_failed_build_leaves_exact_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(graph: ann.Hnsw, *args: Any) -> None:
        raise RuntimeError("no memory")

    monkeypatch.setattr(ann.Hnsw, "add", broken)
    records = make_corpus(1, N)
    idx = open_ann(tmp_path / "f")
    await idx.upsert(records)
    assert not await idx.wait_ann()
    assert "building the vector graph" in caplog.text
    await idx.upsert(list(make_corpus(5, 10, prefix="more")))  # no second attempt
    assert idx._ann_thread is not None and not idx._ann_thread.is_alive()
    assert idx._journal is None
    await check_against(idx, Oracle([*records, *make_corpus(5, 10, prefix="more")]), 17, 20)
    await idx.close()


async def test_without_usearch_search_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """usearch comes with the `local` extra; an install without it searches exactly."""
    monkeypatch.setitem(sys.modules, "usearch.index", None)  # import fails
    records = make_corpus(1, N)
    idx = open_ann(tmp_path / "n")
    await idx.upsert(records)
    assert not await idx.wait_ann()
    assert "install rag-service[local]" in caplog.text
    await check_against(idx, Oracle(records), seed=19, rounds=10)
    await idx.close()


async def test_a_failed_graph_update_leaves_exact_search(
    corpus: tuple[LocalIndex, Oracle], monkeypatch: pytest.MonkeyPatch
) -> None:
    idx, oracle = corpus

    def broken(graph: ann.Hnsw, *args: Any) -> None:
        raise MemoryError("no memory")

    monkeypatch.setattr(ann.Hnsw, "replace", broken)
    fresh = list(make_corpus(6, 10, prefix="fresh"))
    await idx.upsert(fresh)  # committed, and in the matrix: only the graph is dropped
    oracle.upsert(fresh)
    assert not await idx.wait_ann()
    await check_against(idx, oracle, seed=18, rounds=20)


async def test_close_stops_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_index, "_ANN_CHUNK", 8)
    slow_graph(monkeypatch, 0.01)
    plain = open_ann(tmp_path / "c", None)
    await plain.upsert(make_corpus(1, N))
    await plain.close()
    idx = open_ann(tmp_path / "c")
    await idx.close()
    assert graph_files(tmp_path / "c") == []  # stopped before it finished: nothing saved


async def test_bench_compares_exact_with_the_graph() -> None:
    result = await index_bench.run(sizes=(300, 2000), queries=20, dim=48)
    assert [row["vectors"] for row in result["sizes"]] == [300, 2000]
    for row in result["sizes"]:
        graph = row["ann"]
        assert 0 < graph["query_ms"]["p50"] <= graph["query_ms"]["p95"]
        assert graph["recall_at_10"] >= 0.9
        assert graph["build_s"] >= 0 and graph["load_s"] >= 0 and graph["memory_mb"] > 0
        assert row["memory_mb"] > 0 and row["query_ms"]["p50"] > 0
    text = index_bench.summary(result)
    assert "LocalIndex.query top-10" in text and "recall@10" in text


def test_setting_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().ann_threshold == 200_000
    monkeypatch.setenv("RAGD_ANN_THRESHOLD", "0")
    assert Settings().ann_threshold == 0
