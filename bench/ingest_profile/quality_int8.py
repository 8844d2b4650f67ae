"""Retrieval with the int8 export against torch on a BEIR subset: vector-only nDCG@10 and
Recall@10 per document (each document scored by its best chunk), torch vs onnxruntime fp32-opt
vs int8, the same chunks and queries. A small subset has few queries: a sanity check only.

Usage: python bench/ingest_profile/quality_int8.py [--beir /tmp/negc400] [--work /tmp/ragd-onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import common
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc400"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragd-onnx"))
    ap.add_argument("--out", default="quality_int8")
    a = ap.parse_args()
    from onnx_bench import OrtEmbedder

    from rag_service.config import Settings
    from rag_service.evaluation.beir import load_beir
    from rag_service.evaluation.metrics import mean_scores
    from rag_service.ingest.chunk import chunk_text
    from rag_service.instances import InstanceConfig
    from rag_service.registry import Providers

    st = Settings()
    le: Any = Providers(st).local_embedder(st.embedding_model, st.embedding_pooling)
    beir = load_beir(a.beir)
    cfg = InstanceConfig()
    size = min(cfg.chunk_size, le.max_tokens - 2)
    overlap = min(cfg.overlap_tokens, size // 2)
    texts: list[str] = []
    owner: list[str] = []
    for doc in beir.corpus.values():
        for c in chunk_text(doc.body, le, size, overlap):
            texts.append(c)
            owner.append(doc.id)
    queries = {q: le.query_instruction + t for q, t in beir.queries.items()}
    engines: dict[str, Any] = {"torch": lambda xs: le._embed(xs)}
    for name, file in (
        ("ort fp32-opt", "minilm-pooled-eager-opt.onnx"),
        ("ort int8", "minilm-pooled-eager-opt-int8-pc.onnx"),
    ):
        m = OrtEmbedder(a.work / file, le._batch_tokenizer, le.max_tokens, 2)
        engines[name] = m.embed
    out = {}
    for name, embed in engines.items():
        docs = embed(texts)
        qv = embed(list(queries.values()))
        runs = {}
        for (qid, _), q in zip(queries.items(), qv, strict=True):
            scores = docs @ q
            best: dict[str, float] = {}
            for i in np.argsort(-scores):
                best.setdefault(owner[i], float(scores[i]))
            runs[qid] = list(best)[:100]
        out[name] = {k: round(v, 4) for k, v in mean_scores(runs, beir.qrels).items()}
        print(name, out[name])
    common.save(
        a.out,
        {"beir": str(a.beir), "queries": len(queries), "chunks": len(texts), "scores": out},
    )


if __name__ == "__main__":
    main()
