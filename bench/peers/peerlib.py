"""Shared by the peer runners (standard library only: it runs in every peer's venv). The
BEIR folder is read by ragd's own `rag_service.evaluation.beir` (standard library only too),
imported from this checkout, so that every peer indexes exactly what ragd indexes.

A runner is called as `python run_X.py --beir DIR --model DIR --out FILE [--threads N]`,
indexes every passage of the BEIR folder, retrieves the top `--depth` passages of each judged
query in each mode, and writes one JSON (see `Report`)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout, for rag_service

# re-exported for the runners and the driver
from rag_service.evaluation.beir import load_beir as load_beir
from rag_service.evaluation.beir import load_qrels as load_qrels

Run = dict[str, dict[str, float]]  # query id -> passage id -> score (best first)
MODES = ("vector", "keyword", "hybrid")


def offline() -> None:
    """No model hub: every peer loads the model folder it is given."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Report:
    """What a runner writes; the driver scores `runs` and reads the rest as is."""

    peer: str
    versions: dict[str, str]
    passages: int
    queries: int
    chunks: int | None = None
    ingest_s: float = 0.0  # from the start of indexing (library import, model load) to done
    model_load_s: float | None = None  # the part of ingest_s spent loading the model
    setup_s: float | None = None  # before the ingest clock starts (not counted in ingest_s)
    torch_threads: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    mode_s: dict[str, float] = field(default_factory=dict)  # all queries of a mode, wall s
    hybrid_ms: list[float] = field(default_factory=list)  # each hybrid query, in-process
    peak_rss_mb: float = 0.0
    children_peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """ru_maxrss in MB (Linux reports KiB)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def run_mode(
    report: Report,
    mode: str,
    queries: dict[str, str],
    search: Callable[[str], list[tuple[str, float]]],
    timed: bool = False,
) -> None:
    """Every query through `search` (passage id, score best first) into `report.runs[mode]`;
    `timed`: each query's wall ms into `report.hybrid_ms`."""
    run: Run = {}
    started = time.perf_counter()
    for qid, text in queries.items():
        t0 = time.perf_counter()
        hits = search(text)
        if timed:
            report.hybrid_ms.append(round((time.perf_counter() - t0) * 1000, 3))
        run[qid] = {pid: float(score) for pid, score in hits}
    report.mode_s[mode] = round(time.perf_counter() - started, 3)
    report.runs[mode] = run


def finish(report: Report, out: Path) -> None:
    """Peak RSS, then the JSON."""
    report.peak_rss_mb = peak_rss_mb()
    report.children_peak_rss_mb = peak_rss_mb(resource.RUSAGE_CHILDREN)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(asdict(report), ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )


def parse_args(doc: str | None) -> argparse.Namespace:
    """The runners' common options; --threads also sets OMP_NUM_THREADS before torch loads."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--beir", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, help="the local model folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--depth", type=int, default=100, help="passages per query")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: own)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    offline()
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
