"""Vector index latency: `LocalIndex.query` top-k at growing sizes, exact and through the HNSW
graph (ANN) side by side, with the graph's recall@k against exact search, build time and memory.

The vectors are not uniform random ones (in 384 dimensions those have no real neighbours, the
worst case for any graph index: recall@10 about 0.4 at 50k where sentence embeddings give 0.98).
They are drawn from `TopicMixture`, shaped after MiniLM embeddings of real English sentences,
and the queries are further draws from the same mixture (held-out vectors, not in the index).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rag_service.benchmarks.ingest import WORDS
from rag_service.benchmarks.machine import describe_machine, percentiles_ms, spread
from rag_service.providers import ann
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorIndex, VectorRecord

# ~5,000 words ("river42"): a query word matches a few hundred of 100k chunks, as real terms do.
VOCABULARY = [f"{w}{i}" for w in WORDS for i in range(170)]
BATCH = 20_000
SIZES = (10_000, 100_000, 1_000_000)
BenchProgress = Callable[[str, int, int | None], None]  # stage, done, total
Vectors = Callable[[np.random.Generator, int, int], npt.NDArray[np.float32]]  # rng, n, dim


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


class TopicMixture:
    """Unit vectors shaped like sentence embeddings: a mixture of `topics` Gaussians in a random
    rotation, with a power-law spectrum (variance of the i-th direction ~ i^-0.75) and a shared
    mean direction. Fitted to MiniLM-L6 embeddings of 50,000 English sentences (docstrings of
    the installed packages); the real and the drawn sets compare as (real / drawn): variance in
    the top 10, 50, 100 directions 0.22 / 0.25, 0.54 / 0.50, 0.73 / 0.65; mean cosine of two
    vectors 0.09 / 0.08; median cosine of a held-out vector to its nearest and 10th nearest
    neighbour among 50k 0.66 / 0.66 and 0.53 / 0.57. An HNSW graph finds their neighbours a
    little less well than the real ones' (recall@10 0.959 against 0.980 at 50k, same settings),
    so the recall measured here is, if anything, low."""

    def __init__(self, dim: int, topics: int = 3000, seed: int = 12345) -> None:
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.dim, self._rotation = dim, basis.T.copy()
        self._sigma = (np.arange(1, dim + 1) ** -0.375).astype(np.float32)
        centers = rng.standard_normal((topics, dim), dtype=np.float32) * self._sigma
        self._centers = centers @ self._rotation + 1.5 * basis[:, 0]

    def __call__(self, rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
        """`n` draws (the `Vectors` signature; `dim` must be the mixture's)."""
        assert dim == self.dim
        topic = rng.integers(0, len(self._centers), n)
        noise = rng.standard_normal((n, dim), dtype=np.float32) * (0.9 * self._sigma)
        vecs = self._centers[topic] + noise @ self._rotation
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs


def phrases(rng: random.Random, n: int, words: int) -> list[str]:
    return [" ".join(rng.choices(VOCABULARY, k=words)) for _ in range(n)]


async def fill_index(
    index: VectorIndex,
    n: int,
    dim: int,
    seed: int = 0,
    progress: BenchProgress | None = None,
    vectors: Vectors = unit_vectors,
) -> float:
    """Upsert `n` chunks (`vectors`, 8-word texts) in large batches; seconds taken."""
    rng, words = np.random.default_rng(seed), random.Random(seed)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        vecs, texts = vectors(rng, count, dim), phrases(words, count, 8)
        await index.upsert(
            [
                VectorRecord(
                    f"item{i // 8}:{i % 8}",
                    vecs[i - start],
                    {
                        "text": texts[i - start],
                        "item_id": f"item{i // 8}",
                        "filename": f"doc{i // 8}.md",
                        "folder": "/",
                        "timestamp": 1_700_000_000,
                    },
                )
                for i in range(start, start + count)
            ]
        )
        if progress:
            progress("indexing", start + count, n)
    return time.perf_counter() - t0


async def query_times(
    index: VectorIndex, queries: Sequence[npt.NDArray[np.float32]], top_k: int
) -> list[float]:
    return (await timed_queries(index, queries, top_k))[0]


async def timed_queries(
    index: VectorIndex, queries: Sequence[npt.NDArray[np.float32]], top_k: int
) -> tuple[list[float], list[list[str]]]:
    """Seconds of each query and the ids it found."""
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        matches = await index.query(q, top_k)
        times.append(time.perf_counter() - t0)
        found.append([m.id for m in matches])
    return times, found


def recall(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Mean share of each exact top-k that the approximate top-k holds."""
    shares = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True) if t]
    return round(sum(shares) / max(len(shares), 1), 4)


async def open_with_graph(path: Path, spec: IndexSpec) -> LocalIndex:
    """Open with the graph always on; return once it is loaded or built."""
    index = await LocalIndex.aopen(path, spec, ann_threshold=1)
    if not await index.wait_ann():
        await index.close()
        raise RuntimeError(f"the vector graph of {path} could not be built (see the log)")
    return index


async def run(
    sizes: Sequence[int] = SIZES,
    queries: int = 100,
    dim: int = 384,
    top_k: int = 10,
    progress: BenchProgress | None = None,
) -> dict[str, Any]:
    """For each size: fill a fresh index in a temporary folder and time `queries` exact queries;
    reopen it with the graph on (none saved yet: built), time the same queries and compare their
    results with the exact ones; reopen once more to time loading the saved graph."""
    mixture = TopicMixture(dim)
    qs = list(mixture(np.random.default_rng(1), queries + 3, dim))
    spec = IndexSpec("bench", "mean", dim)
    rows = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="ragd-bench-index-"))
        path = work / "index"
        try:
            index = await LocalIndex.aopen(path, spec)
            try:
                build_s = await fill_index(index, n, dim, progress=progress, vectors=mixture)
                await query_times(index, qs[:3], top_k)  # warm up
                times, exact = await timed_queries(index, qs[3:], top_k)
            finally:
                await index.close()
            if progress:
                progress("building the graph", 0, None)
            index = await open_with_graph(path, spec)
            try:
                built = dict(index.ann_stats)
                await query_times(index, qs[:3], top_k)
                ann_times, approx = await timed_queries(index, qs[3:], top_k)
            finally:
                await index.close()
            index = await open_with_graph(path, spec)
            loaded = dict(index.ann_stats)
            await index.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(
            {
                "vectors": n,
                "build_s": round(build_s, 1),
                "upsert_vectors_per_s": round(n / build_s),
                "query_ms": percentiles_ms(times),
                "memory_mb": round(n * dim * 4 / 2**20, 1),  # the float32 matrix
                "ann": {
                    "query_ms": percentiles_ms(ann_times),
                    f"recall_at_{top_k}": recall(approx, exact),
                    "build_s": round(built["seconds"], 1),
                    "load_s": round(loaded["seconds"], 2),
                    "memory_mb": round(built["memory_bytes"] / 2**20, 1),  # beside the matrix
                },
            }
        )
    return {
        "dim": dim,
        "top_k": top_k,
        "queries": queries,
        "vectors": "TopicMixture (shaped like MiniLM embeddings); queries: held-out draws",
        "ann_settings": {
            "library": "usearch",
            "dtype": ann.DTYPE,
            "connectivity": ann.CONNECTIVITY,
            "expansion_add": ann.EXPANSION_ADD,
            "expansion_search": ann.EXPANSION_SEARCH,
            "candidates": ann.fetch_count(top_k),
        },
        "sizes": rows,
        "machine": describe_machine(),
    }


def summary(result: dict[str, Any]) -> str:
    k = result["top_k"]
    lines = [
        f"LocalIndex.query top-{k}, {result['dim']} dims, exact | ANN (HNSW graph; "
        f"recall@{k} against exact):"
    ]
    for row in result["sizes"]:
        a = row["ann"]
        lines.append(
            f"  {row['vectors']:>9,} vectors: exact {spread(row['query_ms'])} "
            f"(matrix {row['memory_mb']} MB; upserts {row['build_s']} s)"
        )
        lines.append(
            f"  {'':>17}  ANN   {spread(a['query_ms'])}, recall@{k} {a[f'recall_at_{k}']} "
            f"(graph {a['memory_mb']} MB more; built in {a['build_s']} s, loaded in "
            f"{a['load_s']} s)"
        )
    return "\n".join(lines)
