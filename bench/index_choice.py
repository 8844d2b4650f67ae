"""Which vector index to embed: numpy exact search (LocalIndex) versus LanceDB, on this machine.

Usage: python bench/index_choice.py [--n 100000] [--dim 384] [--queries 50]
Prints a table and writes bench/results/index_choice.json. LanceDB is skipped if not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag_service.providers.local_index import LocalIndex
from rag_service.providers.protocols import IndexSpec, VectorRecord

Row = dict[str, Any]
FOLDERS = [f"folder-{i}/" for i in range(10)]


def stats(name: str, times: list[float], note: str = "") -> Row:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"name": name, "mean_ms": statistics.fmean(ms), "p95_ms": p95, "note": note}


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def corpus(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vocab = [f"w{i}" for i in range(5000)]
    ranks = np.minimum(rng.zipf(1.2, size=(n, 12)) - 1, len(vocab) - 1)
    texts = [" ".join(vocab[r] for r in row) for row in ranks]
    return vecs, texts, vocab


def bench_numpy(vecs: np.ndarray, queries: np.ndarray) -> Row:
    def one(q: np.ndarray) -> None:
        s = vecs @ q
        top = np.argpartition(-s, 9)[:10]
        top[np.argsort(-s[top])]

    return stats("numpy exact top-10", [timed(lambda q=q: one(q), 1)[0] for q in queries])


async def bench_local(
    vecs: np.ndarray, texts: list[str], vocab: list[str], queries: np.ndarray, root: Path
) -> list[Row]:
    n, dim = vecs.shape
    spec = IndexSpec("bench", "mean", dim)
    idx = LocalIndex.open(root / "local", spec)
    t0, batch = time.perf_counter(), 256
    for s in range(0, n, batch):
        await idx.upsert(
            [
                VectorRecord(
                    f"item{i // 8}:{i % 8}",
                    vecs[i],
                    {"text": texts[i], "folder": FOLDERS[i % 10], "timestamp": 1_700_000_000 + i},
                )
                for i in range(s, min(n, s + batch))
            ]
        )
    upsert_s = time.perf_counter() - t0
    await idx.close()
    t0 = time.perf_counter()
    idx = LocalIndex.open(root / "local", spec)
    open_s = time.perf_counter() - t0
    rows = [
        {
            "name": "LocalIndex upsert, batches of 256",
            "vectors_per_s": n / upsert_s,
            "note": f"{n / upsert_s:,.0f} vectors/s ({upsert_s:.1f} s total, synchronous=FULL)",
        },
        {"name": "LocalIndex open (load matrix)", "mean_ms": open_s * 1000, "p95_ms": None},
    ]

    async def run(fn: Callable[[int], Any], count: int) -> list[float]:
        out = []
        for i in range(count):
            t = time.perf_counter()
            await fn(i)
            out.append(time.perf_counter() - t)
        return out

    nq = len(queries)
    t = await run(lambda i: idx.query(queries[i], 10), nq)
    rows.append(stats("LocalIndex.query, no filter", t))
    first = await run(lambda i: idx.query(queries[0], 10, {"folder": FOLDERS[3]}), 1)
    rows.append(stats("LocalIndex.query, first filter", first, "builds the folder column"))
    t = await run(lambda i: idx.query(queries[i], 10, {"folder": FOLDERS[i % 10]}), nq)
    rows.append(stats("LocalIndex.query, folder $eq (10%)", t))
    trick = {"folder": {"$gt": "folder-3//", "$lte": "folder-3/z"}, "timestamp": {"$gte": 0}}
    t = await run(lambda i: idx.query(queries[i], 10, trick), nq)
    rows.append(stats("LocalIndex.query, starts-with + range", t))
    rng = np.random.default_rng(1)
    words = [" ".join(rng.choice(vocab[:2000], size=2)) for _ in range(nq)]
    for mode in ("or", "and"):
        t = await run(lambda i, m=mode: idx.keyword_query(words[i], 10, None, m), nq)
        rows.append(stats(f"LocalIndex.keyword_query ({mode}, 2 words)", t))
    common = [f"w{i % 3} w{i % 7 + 3}" for i in range(nq)]
    t = await run(lambda i: idx.keyword_query(common[i], 10), nq)
    rows.append(stats("LocalIndex.keyword_query (or, common words)", t, "matches ~half"))
    t = await run(lambda i: idx.keyword_query(words[i], 10, {"folder": FOLDERS[i % 10]}), nq)
    rows.append(stats("LocalIndex.keyword_query + folder filter", t))
    await idx.close()
    return rows


def bench_lance(vecs: np.ndarray, queries: np.ndarray, root: Path, cap_s: float) -> list[Row]:
    if importlib.util.find_spec("lancedb") is None:
        return [{"name": "LanceDB", "note": "skipped: lancedb not installed"}]
    import lancedb
    import pyarrow as pa

    n, dim = vecs.shape
    db = lancedb.connect(str(root / "lance"))
    t0 = time.perf_counter()
    col = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    table = db.create_table("chunks", pa.table({"id": pa.array(range(n)), "vector": col}))
    load_s = time.perf_counter() - t0

    def search(q: np.ndarray, **kw: Any) -> None:
        qb = table.search(q).metric("cosine").limit(10)
        if "nprobes" in kw:
            qb = qb.nprobes(kw["nprobes"])
        qb.to_list()

    search(queries[0])
    flat = [timed(lambda q=q: search(q), 1)[0] for q in queries]
    rows = [stats("LanceDB flat search top-10", flat, f"table load {load_s:.1f} s")]
    done: dict[str, float] = {}

    def build() -> None:
        t = time.perf_counter()
        from lancedb.index import IvfPq

        cfg = IvfPq(distance_type="cosine", num_partitions=max(1, int(n**0.5)))
        table.create_index("vector", config=cfg)
        done["s"] = time.perf_counter() - t

    th = threading.Thread(target=build, daemon=True)
    th.start()
    th.join(cap_s)
    if "s" not in done:
        rows.append({"name": "LanceDB IVF_PQ build", "note": f"gave up after {cap_s:.0f} s"})
        return rows
    rows.append({"name": "LanceDB IVF_PQ build", "mean_ms": done["s"] * 1000, "p95_ms": None})
    search(queries[0], nprobes=20)
    ivf = [timed(lambda q=q: search(q, nprobes=20), 1)[0] for q in queries]
    rows.append(stats("LanceDB IVF_PQ top-10 (nprobes 20)", ivf, "approximate"))
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"| {'measurement':44} | {'mean ms':>9} | {'p95 ms':>9} | note", "|---|---:|---:|---|"]
    for r in rows:
        mean, p95 = r.get("mean_ms"), r.get("p95_ms")
        cells = [f"{v:9.2f}" if isinstance(v, float) else f"{'':9}" for v in (mean, p95)]
        lines.append(f"| {r['name']:44} | {cells[0]} | {cells[1]} | {r.get('note', '')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--lance-index-cap", type=float, default=180.0, help="seconds")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    vecs, texts, vocab = corpus(args.n, args.dim)
    queries = np.random.default_rng(2).normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    root, load_before = Path(tempfile.mkdtemp(prefix="index-choice-")), os.getloadavg()[0]
    try:
        rows = [bench_numpy(vecs, queries)]
        rows += asyncio.run(bench_local(vecs, texts, vocab, queries, root))
        rows += bench_lance(vecs, queries, root, args.lance_index_cap)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lance = importlib.util.find_spec("lancedb")
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sqlite": __import__("sqlite3").sqlite_version,
        "lancedb": __import__("lancedb").__version__ if lance else None,
        "loadavg_before_after": [load_before, os.getloadavg()[0]],
    }
    params = {"n": args.n, "dim": args.dim, "queries": args.queries}
    print(f"N={args.n} dim={args.dim} queries={args.queries} on {machine}")
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "params": params, "machine": machine}
    (args.out / "index_choice.json").write_text(json.dumps({**result, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
