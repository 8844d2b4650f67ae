"""Ingestion throughput: a whole sync's chunks/s against the raw embedder's texts/s on the same
texts, in the same run, as a ratio (target >= 0.9 with the local MiniLM).

Usage: python bench/ingest.py [--docs 200] [--repeat 3]   (medians of alternating runs)
Writes bench/results/ingest.json. The same as `ragd bench ingest`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from rag_service.benchmarks.ingest import make_corpus, run, summary
from rag_service.benchmarks.machine import save_result

__all__ = ["make_corpus", "run"]  # bench/cloudflare_ingest.py writes the same corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.docs, args.repeat))
    save_result("ingest", result)
    print(summary(result))


if __name__ == "__main__":
    main()
