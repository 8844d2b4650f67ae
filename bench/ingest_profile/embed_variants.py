"""The bare embedder on the chunk texts of a BEIR subset, in variants run interleaved:
ragd's LocalEmbedder as rag_service/registry.py builds it (batch 32, torch_threads() threads,
length-sorted batches, inference_mode, max_length 256), its threads and batch size changed,
unsorted batches, no_grad instead of inference_mode, and sentence-transformers'
SentenceTransformer.encode (what txtai runs) on the same model folder.

Usage: python bench/ingest_profile/embed_variants.py [--beir /tmp/negc400] [--rounds 3]
         [--only NAME,NAME] [--out embed_variants]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import common  # sets HF_HUB_OFFLINE and sys.path
import numpy as np
import torch


def embed_like_ragd(
    le: Any, texts: list[str], batch: int, threads: int, sort: bool = True, grad: str = "inference"
) -> np.ndarray:
    """LocalEmbedder._embed with its knobs exposed (same tokenizer, model, pooling)."""
    out = np.empty((len(texts), le.dimensions), dtype=np.float32)
    order = (
        sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        if sort
        else list(range(len(texts)))
    )
    ctx = torch.inference_mode() if grad == "inference" else torch.no_grad()
    with ctx:
        torch.set_num_threads(threads)
        for s in range(0, len(order), batch):
            rows = order[s : s + batch]
            enc = le._tokenize([texts[i] for i in rows])  # LocalEmbedder's own padding
            hidden = le.model(**enc).last_hidden_state
            out[rows] = le._pool(hidden, enc["attention_mask"]).cpu().numpy()
    return out


def padding_stats(le: Any, texts: list[str], batch: int, sort: bool) -> dict[str, float]:
    lens = [
        len(le._batch_tokenizer(t, truncation=True, max_length=le.max_tokens)["input_ids"])
        for t in texts
    ]
    order = (
        sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        if sort
        else list(range(len(texts)))
    )
    real = padded = 0
    for s in range(0, len(order), batch):
        b = [lens[i] for i in order[s : s + batch]]
        real += sum(b)
        padded += max(b) * len(b)
    return {"real_tokens": real, "padded_tokens": padded, "useful": round(real / padded, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc400"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="embed_variants")
    a = ap.parse_args()

    from rag_service.config import Settings
    from rag_service.providers.local_models import torch_threads
    from rag_service.registry import Providers

    info = common.machine()
    st = Settings()
    le: Any = Providers(st).local_embedder(st.embedding_model, st.embedding_pooling)
    default_threads, default_batch = le.threads, le.batch_size
    texts = common.chunk_texts(a.beir, le)
    docs = len(__import__("rag_service.evaluation.beir", fromlist=["x"]).load_beir(a.beir).corpus)
    print(
        f"{docs} passages -> {len(texts)} chunks; ragd default: threads={default_threads} "
        f"(torch_threads()={torch_threads()}), batch={default_batch}, max_tokens={le.max_tokens}"
    )

    from sentence_transformers import SentenceTransformer

    stm = SentenceTransformer(str(common.model_dir()), device="cpu")
    print(f"sentence-transformers max_seq_length={stm.max_seq_length}")

    def ragd(threads: int, batch: int) -> Any:
        def run() -> np.ndarray:
            le.threads, le.batch_size = threads, batch
            try:
                return le._embed(texts)
            finally:
                le.threads, le.batch_size = default_threads, default_batch

        return run

    def st_encode(threads: int, batch: int) -> Any:
        def run() -> np.ndarray:
            torch.set_num_threads(threads)
            return stm.encode(
                texts,
                batch_size=batch,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

        return run

    t1 = default_threads
    variants: dict[str, Any] = {
        "default (ragd t1 b32 sorted inference_mode)": ragd(t1, default_batch),
        "threads 2": ragd(2, default_batch),
        "batch 64": ragd(t1, 64),
        "batch 128": ragd(t1, 128),
        "threads 2 batch 128": ragd(2, 128),
        "unsorted": lambda: embed_like_ragd(le, texts, default_batch, t1, sort=False),
        "no_grad (not inference_mode)": lambda: embed_like_ragd(
            le, texts, default_batch, t1, grad="no_grad"
        ),
        "ST.encode t1 b32": st_encode(t1, 32),
        "ST.encode t2 b32": st_encode(2, 32),
    }
    if a.only:
        keep = a.only.split(",")
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i == 0 or k in keep}
    base = next(iter(variants))

    # Same vectors? (ragd vs ST vs unsorted): max |1 - cos|
    ref = variants[base]()
    checks = {
        "ST.encode vs ragd": common.cosine_gap(ref, st_encode(t1, 32)()),
        "unsorted vs sorted": common.cosine_gap(
            ref, embed_like_ragd(le, texts, 32, t1, sort=False)
        ),
        "batch 128 vs 32": common.cosine_gap(ref, ragd(t1, 128)()),
    }
    print("max |1-cos|:", checks)
    pads = {
        f"b{b} {'sorted' if s else 'unsorted'}": padding_stats(le, texts, b, s)
        for b in (32, 64, 128)
        for s in (True, False)
    }
    print("padding:", pads)

    times = common.interleaved(variants, a.rounds)
    summary = common.summarise(times, base, docs)
    for row in summary.values():
        row["chunks/s"] = round(len(texts) / row["median_s"], 2)
    print(common.table(summary))
    info["loadavg_end"] = os.getloadavg()
    path = common.save(
        a.out,
        {
            "machine": info,
            "passages": docs,
            "chunks": len(texts),
            "rounds": a.rounds,
            "default": {
                "threads": default_threads,
                "batch": default_batch,
                "max_tokens": le.max_tokens,
            },
            "cosine_gap": checks,
            "padding": pads,
            "summary": summary,
            "seconds": times,
            "cpu_seconds": common.CPU,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
