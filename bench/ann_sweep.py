"""HNSW search-list sweep at one size: build one graph (ragd's settings) over `TopicMixture`
vectors, then time top-10 searches (graph candidates rescored exactly, as `LocalIndex` does)
and their recall@10 against exact search for several `expansion_search` values.

    .venv/bin/python bench/ann_sweep.py --n 1000000 --out bench/results/ann-sweep-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from rag_service.benchmarks.index import TopicMixture
from rag_service.benchmarks.machine import describe_machine, percentiles_ms
from rag_service.providers import ann


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--expansions", default="128,256,384,512")
    ap.add_argument("--chunk", type=int, default=0, help="add in chunks of this many rows")
    ap.add_argument("--out", type=Path, default=Path("bench/results/ann-sweep.json"))
    a = ap.parse_args()
    mix = TopicMixture(a.dim)
    rng = np.random.default_rng(0)
    mat = np.concatenate([mix(rng, min(100_000, a.n - s), a.dim) for s in range(0, a.n, 100_000)])
    queries = mix(np.random.default_rng(1), a.queries, a.dim)
    truth = [np.argsort(-(mat @ q))[:10] for q in queries]
    graph = ann.Hnsw(a.dim)
    t0 = time.perf_counter()
    step = a.chunk or a.n  # LocalIndex builds in chunks of 4,096 rows
    for start in range(0, a.n, step):
        graph.add(
            np.arange(start, min(start + step, a.n), dtype=np.int64), mat[start : start + step]
        )
    build_s = time.perf_counter() - t0
    print(f"built {a.n:,} in {build_s:.0f} s, {graph.memory_bytes / 2**20:.0f} MB", flush=True)
    rows = []
    for expansion in (int(x) for x in a.expansions.split(",")):
        graph._index.expansion_search = expansion
        times, hits = [], 0
        for q, want in zip(queries, truth, strict=True):
            started = time.perf_counter()
            keys = graph.search(q, max(expansion, ann.FETCH_PER_K * 10))
            scores = mat[keys] @ q
            top = keys[np.argsort(-scores)[:10]]
            times.append(time.perf_counter() - started)
            hits += len(set(top.tolist()) & set(want.tolist()))
        row = {
            "expansion_search": expansion,
            "query_ms": percentiles_ms(times),
            "recall_at_10": round(hits / (10 * len(queries)), 4),
            "loadavg": os.getloadavg()[0],
        }
        print(row, flush=True)
        rows.append(row)
    result = {
        "n": a.n,
        "dim": a.dim,
        "queries": a.queries,
        "build_s": round(build_s, 1),
        "chunk": a.chunk,
        "graph_mb": round(graph.memory_bytes / 2**20, 1),
        "settings": {"dtype": ann.DTYPE, "connectivity": ann.CONNECTIVITY},
        "rows": rows,
        "machine": describe_machine(),
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
