"""Embedding precision on this CPU: float32 against bfloat16 weights (`RAGD_EMBEDDING_PRECISION`),
as `LocalEmbedder` runs them, on NegConstraint passages and queries.

1. batches: `embed_documents` of a seeded sample of passages, each variant once per round, the
   order alternating; wall and process CPU seconds, and the lowest cosine to float32's vectors.
2. single queries: `embed_query` of the dataset's queries, the variants interleaved query by
   query; p50 / p90 ms.

    .venv/bin/python bench/precision.py [--passages 400] [--rounds 2] [--queries 80]
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/precision.py   # bfloat16 without AMX

The figures in bench/README.md ("Embedding precision") came from these measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from rag_service.evaluation.beir import load_beir
from rag_service.providers.local_embedder import LocalEmbedder
from rag_service.providers.local_models import fast_bfloat16

ROOT = Path(__file__).resolve().parents[1]


async def main(a: argparse.Namespace) -> None:
    beir = load_beir(a.beir)
    docs = sorted(beir.corpus.values(), key=lambda d: d.id)
    texts = [d.body for d in random.Random(0).sample(docs, a.passages)]
    queries = list(beir.queries.values())[: a.queries]
    print(f"fast_bfloat16() here: {fast_bfloat16()}; oneDNN ISA cap: "
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}")  # fmt: skip
    variants = {p: LocalEmbedder(precision=p) for p in ("float32", "bfloat16")}
    reference = await variants["float32"].embed_documents(texts)
    for r in range(a.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            got = await variants[name].embed_documents(texts)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            cos = float(np.min(np.sum(got * reference, axis=1)))
            print(f"round {r + 1} {name:8} {len(texts)} passages: wall {wall:.2f} s, "
                  f"CPU {cpu:.2f} s, min cosine to float32 {cos:.5f}", flush=True)  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    for e in variants.values():
        await e.embed_query("warm up")
    for i, q in enumerate(queries):
        for name in list(variants) if i % 2 else list(variants)[::-1]:
            t0 = time.perf_counter()
            await variants[name].embed_query(q)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        p90 = sorted(ts)[int(0.9 * len(ts))]
        print(f"{name:8} single queries: p50 {statistics.median(ts) * 1000:.2f} ms, "
              f"p90 {p90 * 1000:.2f} ms ({len(ts)} queries)")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=ROOT.parent / "shared/data/beir/negconstraint")
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--queries", type=int, default=80)
    asyncio.run(main(ap.parse_args()))
