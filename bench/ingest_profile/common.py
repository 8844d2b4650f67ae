"""Shared by the embedder benchmarks: the chunk texts a sync of a BEIR subset embeds, the shipped
model folder, a few queries, and interleaved timing."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def model_dir() -> Path:
    from rag_service.providers.local_models import minilm_path

    return minilm_path()


def chunk_texts(beir: Path, embedder: Any) -> list[str]:
    """What ragd's sync embeds for `beir`: each document's body through the extractor (as a
    .txt file) and the token chunker, with the sizes of rag_service.ingest.items.chunks_of at
    the instance defaults (chunk_size 256, overlap 10 %)."""
    from rag_service.evaluation.beir import load_beir
    from rag_service.ingest.chunk import chunk_item
    from rag_service.ingest.extract import extract_text
    from rag_service.instances import InstanceConfig

    cfg = InstanceConfig()
    size = min(cfg.chunk_size, embedder.max_tokens - 2)
    overlap = min(cfg.overlap_tokens, size // 2)
    out: list[str] = []
    for doc in load_beir(beir).corpus.values():
        data = doc.body.encode("utf-8")
        text = extract_text(doc.filename, data)
        out += [c.text for c in chunk_item(doc.filename, data, text, embedder, size, overlap)]
    return out


def queries(beir: Path, n: int = 8) -> list[str]:
    rows = [json.loads(x) for x in (beir / "queries.jsonl").open(encoding="utf-8") if x.strip()]
    return [r["text"] for r in rows[:n]]


CPU: dict[str, list[float]] = {}  # process CPU seconds of each run, filled by interleaved()


def interleaved(
    variants: dict[str, Callable[[], Any]], rounds: int, log: Callable[[str], None] = print
) -> dict[str, list[float]]:
    """Seconds per run of each variant: every round runs every variant once, the order
    rotated by one each round (A B C, B C A, ...), so a drift in machine load hits all."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    CPU.clear()
    CPU.update({n: [] for n in names})
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            variants[name]()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            times[name].append(dt)
            CPU[name].append(cpu)
            log(
                f"round {r + 1} {name}: {dt:.2f} s wall, {cpu:.2f} s cpu, "
                f"load {os.getloadavg()[0]:.2f}"
            )
    return times


def summarise(
    times: dict[str, list[float]], base: str, items: int, unit: str = "passages/s"
) -> dict[str, dict[str, float]]:
    """Median rate of each variant, and the median over rounds of (base time / variant time)
    from the same round: a ratio > 1 is faster than `base`."""
    out: dict[str, dict[str, float]] = {}
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(times[base], ts, strict=True)]
        out[name] = {
            unit: round(items / statistics.median(ts), 2),
            "ratio_to_" + base: round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "median_s": round(statistics.median(ts), 3),
        }
        if CPU.get(name) and CPU.get(base):
            cr = [b / t for b, t in zip(CPU[base], CPU[name], strict=True)]
            out[name]["cpu_s_median"] = round(statistics.median(CPU[name]), 3)
            out[name]["cpu_ratio_to_" + base] = round(statistics.median(cr), 3)
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    keys = list(next(iter(summary.values())))
    lines = ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=_plain) + "\n")
    return path


def machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_start": os.getloadavg(),
    }


def cosine_gap(a: Sequence[Any], b: Sequence[Any]) -> float:
    """max over rows of |1 - cos(a_i, b_i)| (rows need not be unit vectors)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.abs(1.0 - cos).max())


def _plain(o: Any) -> Any:
    """numpy scalars and arrays as JSON."""
    return o.tolist() if hasattr(o, "tolist") else str(o)
