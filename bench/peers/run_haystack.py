"""Haystack runner (haystack-ai 3 + sentence-transformers-haystack): an InMemoryDocumentStore
(its defaults: BM25L, dot-product similarity; MiniLM's vectors are unit length, so cosine),
SentenceTransformersDocumentEmbedder/TextEmbedder on the model folder, InMemoryEmbeddingRetriever
(vector), InMemoryBM25Retriever (keyword), and for hybrid a Pipeline joining both retrievers'
top `depth` with DocumentJoiner(join_mode="reciprocal_rank_fusion")."""

from __future__ import annotations

import os
import time
from importlib.metadata import version
from typing import Any

from peerlib import Report, finish, load_beir, log, parse_args, run_mode

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # no network here
PACKAGES = (
    "haystack-ai",
    "sentence-transformers-haystack",
    "sentence-transformers",
    "torch",
    "transformers",
)


def hybrid_pipeline(store: Any, text_embedder: Any, depth: int) -> Any:
    """Query embedder -> embedding retriever, BM25 retriever, both -> RRF joiner."""
    from haystack import Pipeline
    from haystack.components.joiners import DocumentJoiner
    from haystack.components.retrievers.in_memory import (
        InMemoryBM25Retriever,
        InMemoryEmbeddingRetriever,
    )

    pipe = Pipeline()
    pipe.add_component("text_embedder", text_embedder)
    pipe.add_component("embedding_retriever", InMemoryEmbeddingRetriever(store, top_k=depth))
    pipe.add_component("bm25_retriever", InMemoryBM25Retriever(store, top_k=depth))
    joiner = DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=depth)
    pipe.add_component("joiner", joiner)
    pipe.connect("text_embedder.embedding", "embedding_retriever.query_embedding")
    pipe.connect("embedding_retriever", "joiner")
    pipe.connect("bm25_retriever", "joiner")
    return pipe


def hits(docs: list[Any]) -> list[tuple[str, float]]:
    return [(str(d.id), float(d.score)) for d in docs]


def main() -> None:
    args = parse_args(__doc__)
    beir = load_beir(args.beir)
    started = time.perf_counter()
    import torch
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.embedders.sentence_transformers import (
        SentenceTransformersDocumentEmbedder,
        SentenceTransformersTextEmbedder,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    model = {"model": str(args.model), "local_files_only": True, "progress_bar": False}
    doc_embedder = SentenceTransformersDocumentEmbedder(**model)
    doc_embedder.warm_up()
    loaded = time.perf_counter()
    docs = [Document(id=p.id, content=p.body) for p in beir.corpus.values()]
    store = InMemoryDocumentStore()
    store.write_documents(doc_embedder.run(documents=docs)["documents"])
    ingest_s = time.perf_counter() - started
    report = Report(
        peer="haystack",
        versions={p: version(p) for p in PACKAGES},
        passages=store.count_documents(),
        queries=len(beir.queries),
        ingest_s=round(ingest_s, 3),
        model_load_s=round(loaded - started, 3),
        torch_threads=torch.get_num_threads(),
        config={
            "bm25_algorithm": store.bm25_algorithm,
            "similarity": store.embedding_similarity_function,
            "batch_size": doc_embedder.batch_size,
            "join_mode": "reciprocal_rank_fusion",
        },
    )
    log(f"haystack: {report.passages} passages in {ingest_s:.1f} s")
    retrieve(report, store, SentenceTransformersTextEmbedder(**model), beir.queries, args.depth)
    finish(report, args.out)


def retrieve(report: Report, store: Any, text_embedder: Any, queries: Any, depth: int) -> None:
    """Vector and keyword through the retrievers, hybrid through the pipeline."""
    from haystack.components.retrievers.in_memory import (
        InMemoryBM25Retriever,
        InMemoryEmbeddingRetriever,
    )

    text_embedder.warm_up()
    vector = InMemoryEmbeddingRetriever(store, top_k=depth)
    keyword = InMemoryBM25Retriever(store, top_k=depth)
    pipe = hybrid_pipeline(store, text_embedder, depth)

    def by_vector(q: str) -> list[tuple[str, float]]:
        embedding = text_embedder.run(text=q)["embedding"]
        return hits(vector.run(query_embedding=embedding)["documents"])

    def by_keyword(q: str) -> list[tuple[str, float]]:
        return hits(keyword.run(query=q)["documents"])

    def hybrid(q: str) -> list[tuple[str, float]]:
        out = pipe.run({"text_embedder": {"text": q}, "bm25_retriever": {"query": q}})
        return hits(out["joiner"]["documents"])

    run_mode(report, "vector", queries, by_vector)
    run_mode(report, "keyword", queries, by_keyword)
    run_mode(report, "hybrid", queries, hybrid, timed=True)


if __name__ == "__main__":
    main()
