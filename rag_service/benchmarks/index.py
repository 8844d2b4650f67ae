"""Vector index latency: `LocalIndex.query` top-k at growing sizes, on random unit vectors."""

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
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorIndex, VectorRecord

# ~5,000 words ("river42"): a query word matches a few hundred of 100k chunks, as real terms do.
VOCABULARY = [f"{w}{i}" for w in WORDS for i in range(170)]
BATCH = 20_000
SIZES = (10_000, 100_000, 1_000_000)
BenchProgress = Callable[[str, int, int | None], None]  # stage, done, total


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


def phrases(rng: random.Random, n: int, words: int) -> list[str]:
    return [" ".join(rng.choices(VOCABULARY, k=words)) for _ in range(n)]


async def fill_index(
    index: VectorIndex, n: int, dim: int, seed: int = 0, progress: BenchProgress | None = None
) -> float:
    """Upsert `n` chunks (random unit vectors, 8-word texts) in large batches; seconds taken."""
    rng, words = np.random.default_rng(seed), random.Random(seed)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        vecs, texts = unit_vectors(rng, count, dim), phrases(words, count, 8)
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
    out = []
    for q in queries:
        t0 = time.perf_counter()
        await index.query(q, top_k)
        out.append(time.perf_counter() - t0)
    return out


async def run(
    sizes: Sequence[int] = SIZES,
    queries: int = 100,
    dim: int = 384,
    top_k: int = 10,
    progress: BenchProgress | None = None,
) -> dict[str, Any]:
    """For each size: build a fresh index in a temporary folder, then time `queries` queries."""
    qs = list(unit_vectors(np.random.default_rng(1), queries + 3, dim))
    rows = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="ragd-bench-index-"))
        try:
            index = await LocalIndex.aopen(work / "index", IndexSpec("bench", "mean", dim))
            try:
                build_s = await fill_index(index, n, dim, progress=progress)
                await query_times(index, qs[:3], top_k)  # warm up
                times = await query_times(index, qs[3:], top_k)
            finally:
                await index.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(
            {
                "vectors": n,
                "build_s": round(build_s, 1),
                "upsert_vectors_per_s": round(n / build_s),
                "query_ms": percentiles_ms(times),
            }
        )
    return {
        "dim": dim,
        "top_k": top_k,
        "queries": queries,
        "sizes": rows,
        "machine": describe_machine(),
    }


def summary(result: dict[str, Any]) -> str:
    lines = [f"LocalIndex.query top-{result['top_k']}, {result['dim']} dims:"]
    for row in result["sizes"]:
        q = spread(row["query_ms"])
        lines.append(f"  {row['vectors']:>9,} vectors: {q} (built in {row['build_s']} s)")
    return "\n".join(lines)
