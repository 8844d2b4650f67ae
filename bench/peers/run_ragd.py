"""ragd runner (ragd's own venv): the path `ragd eval` takes. A fresh Runtime in a temporary data
dir (SQLite, local backend), the corpus written one file per passage and synced by
rag_service.evaluation.run.ingest_corpus (timed as `ragd eval` times "indexed in"); each mode's
top passages by run.ranked_documents (chunks mapped to passages by their best chunk), keyword
match mode "or", match threshold 0. Modes: vector, keyword, hybrid with the instance's default
fusion, and hybrid-rrf (what `ragd eval` calls "hybrid")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from peerlib import Report, finish, log, parse_args, run_mode  # puts this checkout on sys.path

from rag_service.config import Settings
from rag_service.evaluation.beir import load_beir, write_corpus
from rag_service.evaluation.run import INSTANCE, Mode, ingest_corpus, mode_options, ranked_documents
from rag_service.instances import InstanceConfig
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.retrieve.search import KeywordMatchMode, ScoredChunk
from rag_service.runtime import Runtime

MATCH_MODE: KeywordMatchMode = "or"


class TimedProviders(Providers):
    """Providers that time the first embedder load (torch, transformers and the model)."""

    model_load_s: float | None = None

    async def embedder(self, cfg: InstanceConfig) -> Any:
        t0 = time.perf_counter()
        loaded = await super().embedder(cfg)
        if self.model_load_s is None:
            self.model_load_s = time.perf_counter() - t0
        return loaded


class Capture:
    """Stands in for the Runtime in run.ranked_documents: keeps the last search's chunks (for
    the passages' scores) and counts the searches."""

    def __init__(self, rt: Runtime) -> None:
        self.pipeline = self
        self._rt = rt
        self.chunks: Sequence[ScoredChunk] = ()
        self.searches = 0

    async def search(self, instance: str, query: str, options: QueryOptions) -> Any:
        found = await self._rt.pipeline.search(instance, query, options)
        self.chunks, self.searches = found.chunks, self.searches + 1
        return found


def modes() -> dict[str, QueryOptions]:
    """The retrieval modes as `ragd eval` builds their options (hybrid: fusion left unset, so
    the instance's default applies)."""
    hybrid = mode_options(Mode("hybrid", "hybrid"), 0.0, MATCH_MODE)
    return {
        "vector": mode_options(Mode("vector", "vector"), 0.0, MATCH_MODE),
        "keyword": mode_options(Mode("keyword", "keyword"), 0.0, MATCH_MODE),
        "hybrid": dataclasses.replace(hybrid, fusion_method=None),
        "hybrid-rrf": mode_options(Mode("hybrid-rrf", "hybrid", "rrf"), 0.0, MATCH_MODE),
    }


def scored(
    docs: Sequence[str], chunks: Sequence[ScoredChunk], doc_of: Mapping[str, str]
) -> list[tuple[str, float]]:
    """(passage, best chunk score) in ranked_documents' order."""
    best: dict[str, float] = {}
    for c in chunks:
        doc = doc_of.get(c.key)
        if doc is not None:
            best[doc] = max(best.get(doc, float("-inf")), c.score)
    return [(d, best[d]) for d in docs]


def ingest(
    runner: asyncio.Runner, rt: Runtime, providers: TimedProviders, folder: Path, corpus: Path
) -> Any:
    """Sync the passages, written as files into `corpus`, as `ragd eval` does; the report
    (without runs), the judged queries and file name -> passage id."""
    beir = load_beir(folder)
    doc_of = write_corpus(beir, corpus)
    started = time.perf_counter()
    chunks = runner.run(ingest_corpus(rt, beir, corpus, _quiet))
    ingest_s = time.perf_counter() - started
    _, cfg = runner.run(rt.instances.get(INSTANCE))
    embedder = runner.run(providers.embedder(cfg))
    report = Report(
        peer="ragd",
        versions={p: version(p) for p in ("rag-service", "torch", "transformers")},
        passages=len(beir.corpus),
        queries=len(beir.queries),
        chunks=chunks,
        ingest_s=round(ingest_s, 3),
        model_load_s=round(providers.model_load_s or 0.0, 3),
        torch_threads=getattr(embedder, "threads", None),
        config={
            "embedding_model": embedder.model_id,
            "chunk_size": cfg.chunk_size,
            "chunk_overlap": cfg.chunk_overlap,
            "keyword_match_mode": MATCH_MODE,
            "default_fusion": cfg.fusion_method,
            "keyword_index": rt.settings.keyword_index,
            "batch_size": rt.settings.embedding_batch_size,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    )
    log(f"ragd: {report.passages} passages ({chunks} chunks) in {ingest_s:.1f} s")
    return report, beir.queries, doc_of


def _quiet(stage: str, done: int, total: int | None) -> None:
    """No progress output."""


def retrieve(
    runner: asyncio.Runner, rt: Runtime, report: Report, queries: Any, doc_of: Any, depth: int
) -> None:
    """Every mode's runs into `report`, hybrid (default fusion) queries timed."""
    capture = Capture(rt)

    def searcher(options: QueryOptions) -> Any:
        def search(text: str) -> list[tuple[str, float]]:
            ctx = cast(Runtime, capture)
            docs = runner.run(ranked_documents(ctx, text, options, doc_of, depth))
            return scored(docs, capture.chunks, doc_of)

        return search

    for mode, options in modes().items():
        before = capture.searches
        run_mode(report, mode, queries, searcher(options), timed=mode == "hybrid")
        report.extra[f"{mode}_searches_per_query"] = round(
            (capture.searches - before) / max(1, len(queries)), 3
        )


def main() -> None:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="ragd-peers-") as tmp, asyncio.Runner() as runner:
        settings = Settings().model_copy(
            update={"data_dir": Path(tmp) / "data", "database_url": None, "backend": "local"}
        )
        providers = TimedProviders(settings)
        stack = contextlib.AsyncExitStack()
        t0 = time.perf_counter()
        rt = runner.run(stack.enter_async_context(Runtime(settings, providers)))
        setup_s = time.perf_counter() - t0
        try:
            report, queries, doc_of = ingest(runner, rt, providers, args.beir, Path(tmp) / "corpus")
            report.setup_s = round(setup_s, 3)
            retrieve(runner, rt, report, queries, doc_of, args.depth)
        finally:
            runner.run(stack.aclose())
    finish(report, args.out)


if __name__ == "__main__":
    main()
