"""Embedder speed per runtime, as ragd builds the embedder (Providers.local_embedder): torch,
onnx (fp32) and onnx-int8, all with the default thread policy (torch_threads()).

1. batches: `embed_documents` of N NegConstraint passages (seeded sample; longer ones are cut
   at max_tokens as chunks never are), interleaved rounds with the order rotated each round.
   Ratios are torch time / variant time within a round (> 1: faster), median (min-max), wall
   and process CPU.
2. single queries: `embed_query` of the dataset's queries, interleaved call by call (order
   rotated per call); p50/p90 ms and the ratio of p50s.

Usage: python bench/onnx/embed_speed.py [--beir ../shared/data/beir/negconstraint]
         [--passages 300] [--rounds 5] [--queries 50] [--cache /tmp/ragd-onnx-bench/models/onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RUNTIMES = ("torch", "onnx", "onnx-int8")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def ratio_stats(base: list[float], other: list[float]) -> dict[str, float]:
    ratios = [b / o for b, o in zip(base, other, strict=True)]
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    await call()
    return time.perf_counter() - t0, time.process_time() - c0


async def run(a: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch

    from rag_service.config import Settings
    from rag_service.registry import Providers

    corpus = load_jsonl(a.beir / "corpus.jsonl")
    passages = [
        (d.get("title", "") + "\n" + d["text"]).strip()
        for d in random.Random(17).sample(corpus, a.passages)
    ]
    queries = [q["text"] for q in load_jsonl(a.beir / "queries.jsonl")][: a.queries]
    data_dir = a.cache.parent.parent
    embedders: dict[str, Any] = {}
    for rt in RUNTIMES:
        t0 = time.perf_counter()
        st = Settings(data_dir=data_dir, embedding_runtime=rt)
        embedders[rt] = Providers(st).local_embedder(st.embedding_model, st.embedding_pooling)
        built = getattr(embedders[rt], "built", None)
        print(f"{rt}: loaded in {time.perf_counter() - t0:.1f} s, exported {built}")
    tokens = embedders["torch"].token_lengths(passages)
    for e in embedders.values():  # warm up
        await e.embed_documents(passages[:32])
        await e.embed_query(queries[0])

    load_start = os.getloadavg()
    wall: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    cpu: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    for r in range(a.rounds):
        order = RUNTIMES[r % 3 :] + RUNTIMES[: r % 3]
        for rt in order:
            w, c = await timed(lambda rt=rt: embedders[rt].embed_documents(passages))
            wall[rt].append(w)
            cpu[rt].append(c)
            print(
                f"round {r + 1} {rt}: {w:.2f} s wall {c:.2f} s cpu, load {os.getloadavg()[0]:.2f}"
            )
    batches = {
        rt: {
            "median_s": round(statistics.median(wall[rt]), 3),
            "passages_per_s": round(a.passages / statistics.median(wall[rt]), 1),
            "cpu_s_median": round(statistics.median(cpu[rt]), 3),
            "wall_ratio_to_torch": ratio_stats(wall["torch"], wall[rt]),
            "cpu_ratio_to_torch": ratio_stats(cpu["torch"], cpu[rt]),
            "wall_s": [round(x, 3) for x in wall[rt]],
        }
        for rt in RUNTIMES
    }

    lat: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    for i in range(a.queries):
        order = RUNTIMES[i % 3 :] + RUNTIMES[: i % 3]
        query = queries[i % len(queries)]
        for rt in order:
            w, _ = await timed(lambda rt=rt, q=query: embedders[rt].embed_query(q))
            lat[rt].append(w * 1000)
    p50 = {rt: statistics.median(v) for rt, v in lat.items()}
    latency = {
        rt: {
            "p50_ms": round(p50[rt], 2),
            "p90_ms": round(statistics.quantiles(v, n=10)[-1], 2),
            "min_ms": round(min(v), 2),
            "p50_ratio_to_torch": round(p50["torch"] / p50[rt], 2),
            "per_call_ratio_to_torch": ratio_stats(lat["torch"], v),
        }
        for rt, v in lat.items()
    }
    return {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "threads": {rt: e.threads for rt, e in embedders.items()},
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "passages": a.passages,
        "passage_tokens_mean": round(statistics.mean(tokens), 1),
        "rounds": a.rounds,
        "queries": a.queries,
        "batches": batches,
        "latency": latency,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("../shared/data/beir/negconstraint"))
    ap.add_argument("--passages", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ragd-onnx-bench/models/onnx"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "embed_speed.json")
    a = ap.parse_args()
    result = asyncio.run(run(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    for rt, row in result["batches"].items():
        print(rt, "batches", {k: v for k, v in row.items() if k != "wall_s"})
    for rt, row in result["latency"].items():
        print(rt, "query", row)


if __name__ == "__main__":
    main()
