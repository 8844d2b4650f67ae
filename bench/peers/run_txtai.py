"""txtai runner: Embeddings(path=<model folder>, content=True, hybrid=True), i.e. a Faiss dense
index (IDMap,Flat up to 5,000 rows: exact), txtai's BM25 scoring and an SQLite content store;
modes through `search(query, limit, weights=w)`: 1 vector only, 0 keyword only, txtai's default
0.5 hybrid (its convex combination of normalised BM25 and cosine scores)."""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from peerlib import Report, finish, load_beir, log, parse_args, run_mode

WEIGHTS = {"vector": 1.0, "keyword": 0.0, "hybrid": None}  # None: txtai's default (0.5)


def main() -> None:
    args = parse_args(__doc__)
    beir = load_beir(args.beir)
    started = time.perf_counter()
    import torch
    from txtai import Embeddings

    if args.threads:
        torch.set_num_threads(args.threads)
    embeddings = Embeddings(path=str(args.model), content=True, hybrid=True)  # loads the model
    loaded = time.perf_counter()
    embeddings.index((p.id, p.body, None) for p in beir.corpus.values())
    ingest_s = time.perf_counter() - started
    report = Report(
        peer="txtai",
        versions={p: version(p) for p in ("txtai", "faiss-cpu", "torch", "transformers")},
        passages=embeddings.count(),
        queries=len(beir.queries),
        ingest_s=round(ingest_s, 3),
        model_load_s=round(loaded - started, 3),
        torch_threads=torch.get_num_threads(),
        config={**embeddings.config, "weights": WEIGHTS},
    )
    log(f"txtai: {report.passages} passages in {ingest_s:.1f} s")

    def searcher(weights: float | None) -> Any:
        def search(text: str) -> list[tuple[str, float]]:
            hits = embeddings.search(text, args.depth, weights=weights)
            return [(str(h["id"]), float(h["score"])) for h in hits]

        return search

    for mode, weights in WEIGHTS.items():
        run_mode(report, mode, beir.queries, searcher(weights), timed=mode == "hybrid")
    finish(report, args.out)


if __name__ == "__main__":
    main()
