"""Padding: batches sorted by character length (ragd's length_batches, and sentence-transformers)
against sorted by token count, at batch 16 and 32, for torch (as ragd runs it) and onnxruntime
int8 (onnx_bench.py's export), 1 thread, interleaved. Also the share of padded positions that
are real tokens for each ordering and batch size.

Usage: python bench/ingest_profile/sort_batch.py [--beir /tmp/negc200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch


def orders(le: Any, texts: list[str]) -> dict[str, list[int]]:
    ntok = [len(le._counter.encode(t, add_special_tokens=False).ids) for t in texts]
    return {
        "chars": sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True),
        "tokens": sorted(range(len(texts)), key=lambda i: ntok[i], reverse=True),
        "_ntok": ntok,
    }


def useful(ntok: list[int], order: list[int], batch: int) -> float:
    real = padded = 0
    for s in range(0, len(order), batch):
        b = [min(ntok[i] + 2, 256) for i in order[s : s + batch]]
        real, padded = real + sum(b), padded + max(b) * len(b)
    return round(real / padded, 3)


def run_torch(le: Any, texts: list[str], order: list[int], batch: int) -> np.ndarray:
    out = np.empty((len(texts), le.dimensions), dtype=np.float32)
    with torch.inference_mode():
        torch.set_num_threads(1)
        for s in range(0, len(order), batch):
            rows = order[s : s + batch]
            enc = le._tokenize([texts[i] for i in rows])  # LocalEmbedder's own padding
            out[rows] = le._pool(le.model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
    return out


def run_ort(m: Any, texts: list[str], order: list[int], batch: int) -> np.ndarray:
    return np.asarray(m.embed_in(texts, order, batch))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc200"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragd-onnx"))
    ap.add_argument("--out", default="sort_batch")
    a = ap.parse_args()
    from onnx_bench import OrtEmbedder

    from rag_service.config import Settings
    from rag_service.evaluation.beir import load_beir
    from rag_service.registry import Providers

    st = Settings()
    le: Any = Providers(st).local_embedder(st.embedding_model, st.embedding_pooling)
    texts = common.chunk_texts(a.beir, le)
    docs = len(load_beir(a.beir).corpus)
    o = orders(le, texts)
    pads = {
        f"{k} b{b}": useful(o["_ntok"], o[k], b)
        for k in ("chars", "tokens")
        for b in (8, 16, 32, 64)
    }
    print("useful share of padded positions:", pads)
    m = OrtEmbedder(
        a.work / "minilm-pooled-eager-opt-int8-pc.onnx", le._batch_tokenizer, le.max_tokens, 1
    )
    variants = {}
    for eng in ("torch", "ort-int8"):
        for key, b in (("chars", 32), ("tokens", 32), ("tokens", 16), ("chars", 16)):
            f = run_torch if eng == "torch" else run_ort
            obj = le if eng == "torch" else m
            variants[f"{eng} {key}-sorted b{b}"] = functools.partial(f, obj, texts, o[key], b)
    times = common.interleaved(variants, a.rounds)
    out = {}
    for eng, base in (
        ("torch", "torch chars-sorted b32"),
        ("ort-int8", "ort-int8 chars-sorted b32"),
    ):
        sub = {k: v for k, v in times.items() if k.startswith(eng + " ")}
        cpu_all = dict(common.CPU)
        common.CPU.clear()
        common.CPU.update({k: cpu_all[k] for k in sub})
        out[eng] = common.summarise(sub, base, docs)
        common.CPU.update(cpu_all)
        print(common.table(out[eng]))
    common.save(
        a.out,
        {
            "machine": common.machine(),
            "passages": docs,
            "chunks": len(texts),
            "useful": pads,
            "summary": out,
            "seconds": times,
            "cpu_seconds": common.CPU,
        },
    )


if __name__ == "__main__":
    main()
