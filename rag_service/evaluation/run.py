"""Ingest a BEIR corpus into a fresh instance, run its queries in each retrieval mode, score."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_service.config import Settings
from rag_service.errors import RagError
from rag_service.evaluation.beir import BeirSet, load_beir, write_corpus
from rag_service.evaluation.metrics import mean_scores
from rag_service.instances import InstanceConfig
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.retrieve.search import KeywordMatchMode, RetrievalType, ScoredChunk
from rag_service.runtime import Runtime

INSTANCE = "beir"
NO_RERANKER = "not measured: no reranker weights offline"
EvalProgress = Callable[[str, int, int | None], None]  # stage, done, total


@dataclass(frozen=True)
class Mode:
    name: str
    retrieval_type: RetrievalType
    fusion_method: Literal["rrf", "max"] = "rrf"
    rerank: bool = False
    split_exclusions: bool = False


_BASE = (
    Mode("vector", "vector"),
    Mode("keyword", "keyword"),
    Mode("hybrid", "hybrid", "rrf"),
    Mode("hybrid-max", "hybrid", "max"),
)
MODES = (
    _BASE
    + tuple(dataclasses.replace(m, name=f"{m.name}+rerank", rerank=True) for m in _BASE)
    + tuple(
        dataclasses.replace(m, name=f"{m.name}+exclusions", split_exclusions=True) for m in _BASE
    )
)


@dataclass
class EvalResult:
    dataset: str
    date: str
    documents: int
    queries: int
    chunks: int
    ingest_seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    query_seconds: dict[str, float] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Per-mode metrics at the top level, and what the run was under `meta`."""
        meta = {k: v for k, v in dataclasses.asdict(self).items() if k != "metrics"}
        return {**self.metrics, "meta": meta}


async def reranker_error(rt: Runtime, cfg: InstanceConfig) -> str | None:
    """Why the reranker does not load (reranked modes are then not measured), or None."""
    try:
        await rt.providers.reranker(cfg)
    except RagError as exc:
        return exc.message
    return None


def rank_documents(chunks: Sequence[ScoredChunk], doc_of: Mapping[str, str]) -> list[str]:
    """Documents best first, each scored by its best chunk (ties keep retrieval order)."""
    best: dict[str, float] = {}
    for c in chunks:
        doc = doc_of.get(c.key)
        if doc is not None and c.score > best.get(doc, float("-inf")):
            best[doc] = c.score
    return sorted(best, key=lambda d: -best[d])


async def ranked_documents(
    rt: Runtime, query: str, options: QueryOptions, doc_of: Mapping[str, str], depth: int
) -> list[str]:
    """The top `depth` documents: asks for more chunks while several chunks of one document
    leave fewer than `depth` documents and the index has more to give."""
    want = depth
    while True:
        asked = dataclasses.replace(options, max_num_results=want)
        chunks = (await rt.pipeline.search(INSTANCE, query, asked)).chunks
        docs = rank_documents(chunks, doc_of)
        if len(docs) >= depth or len(chunks) < want:
            return docs[:depth]
        want *= 2


def mode_options(
    mode: Mode, match_threshold: float, keyword_match_mode: KeywordMatchMode | None = None
) -> QueryOptions:
    """A mode as the query options any request could send (no rewrite: one query each);
    `keyword_match_mode` None leaves the instance's default in force."""
    return QueryOptions(
        retrieval_type=mode.retrieval_type,
        fusion_method=mode.fusion_method,
        keyword_match_mode=keyword_match_mode,
        match_threshold=match_threshold,
        rewrite=False,
        split_exclusions=mode.split_exclusions,
        reranking=mode.rerank,
        cache=False,
    )


async def rank_queries(
    rt: Runtime,
    options: QueryOptions,
    beir: BeirSet,
    doc_of: Mapping[str, str],
    depth: int,
    report: Callable[[int, int], None],
) -> dict[str, list[str]]:
    """Every judged query's top documents with one set of options."""
    rankings: dict[str, list[str]] = {}
    for qid, text in beir.queries.items():
        rankings[qid] = await ranked_documents(rt, text, options, doc_of, depth)
        report(len(rankings), len(beir.queries))
    return rankings


async def ingest_corpus(rt: Runtime, beir: BeirSet, corpus: Path, progress: EvalProgress) -> int:
    await rt.instances.ensure(INSTANCE, str(corpus), {"backend": "local"})
    done = 0

    def tick(status: str, obj: object, detail: str) -> None:
        nonlocal done
        done += 1
        progress("indexing", done, len(beir.corpus))

    result = await rt.sync(INSTANCE, job_source="eval", progress=tick)
    if result.status != "completed":
        raise RagError(f"indexing the corpus failed: {result.end_reason}")
    return int(result.counts["chunks"])


async def run_eval(
    settings: Settings,
    folder: Path,
    *,
    modes: Sequence[Mode] = MODES,
    depth: int = 100,
    match_threshold: float = 0.0,
    keyword_match_mode: KeywordMatchMode | None = None,
    progress: EvalProgress | None = None,
    make_providers: Callable[[Settings], Providers] = Providers,
    database_url: str | None = None,
) -> EvalResult:
    """Score every mode on one instance built in a temporary data dir (nothing is kept), its
    database SQLite there or `database_url` (RAGD_KEYWORD_INDEX=postgres: a scratch database).
    The match threshold defaults to 0: ranking metrics need the whole ranked list; the keyword
    match mode to the instance default (the one used is in `settings`)."""
    if settings.keyword_index == "postgres" and database_url is None:
        from rag_service.providers.pg_keyword import temporary_database

        async with temporary_database(settings.resolved_database_url) as url:
            return await run_eval(
                settings, folder, modes=modes, depth=depth, match_threshold=match_threshold,
                keyword_match_mode=keyword_match_mode, progress=progress,
                make_providers=make_providers, database_url=url,
            )  # fmt: skip
    beir = load_beir(folder)
    report = progress or (lambda stage, done, total: None)
    with tempfile.TemporaryDirectory(prefix="ragd-eval-") as tmp:
        st = settings.model_copy(
            update={
                "data_dir": Path(tmp) / "data",
                "database_url": database_url,
                "backend": "local",
            }
        )
        doc_of = write_corpus(beir, Path(tmp) / "corpus")
        async with Runtime(st, make_providers(st)) as rt:
            started = time.perf_counter()
            chunks = await ingest_corpus(rt, beir, Path(tmp) / "corpus", report)
            _, cfg = await rt.instances.get(INSTANCE)
            result = EvalResult(
                dataset=folder.name,
                date=datetime.date.today().isoformat(),
                documents=len(beir.corpus),
                queries=len(beir.queries),
                chunks=chunks,
                ingest_seconds=round(time.perf_counter() - started, 1),
                settings={
                    "embedding_model": (await rt.providers.embedder(cfg)).model_id,
                    "chunk_size": cfg.chunk_size,
                    "chunk_overlap": cfg.chunk_overlap,
                    "match_threshold": match_threshold,
                    "keyword_match_mode": keyword_match_mode
                    or cfg.retrieval_options.keyword_match_mode,
                    "depth": depth,
                },
            )
            error = await reranker_error(rt, cfg) if any(m.rerank for m in modes) else None
            if error:
                result.settings["reranker_error"] = error
            for mode in modes:
                if mode.rerank and error:
                    result.not_measured[mode.name] = NO_RERANKER
                    continue
                started = time.perf_counter()
                options = mode_options(mode, match_threshold, keyword_match_mode)
                rankings = await rank_queries(
                    rt, options, beir, doc_of, depth, functools.partial(report, mode.name)
                )
                result.query_seconds[mode.name] = round(time.perf_counter() - started, 1)
                result.metrics[mode.name] = mean_scores(rankings, beir.qrels)
    return result
