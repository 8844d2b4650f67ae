"""Ingestion throughput: a whole sync's chunks/s against the raw embedder's texts/s on the same
texts, in the same run, as a ratio (target >= 0.9 with the local MiniLM)."""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rag_service.benchmarks.machine import describe_machine
from rag_service.config import Settings
from rag_service.registry import EmbedderFactory, Providers
from rag_service.runtime import Runtime

_VOCABULARY = """
    river mountain engine protocol harvest ledger copper signal orchard lantern theorem glacier
    market circuit harbor violin quartz meadow archive compass festival nitrogen canyon vessel
    beacon pigment spindle thunder prairie cipher
"""
WORDS = _VOCABULARY.split()


def make_corpus(root: Path, docs: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for d in range(docs):
        paragraphs = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))).capitalize() + "."
            for _ in range(rng.randint(2, 8))
        ]
        (root / f"doc{d:04}.md").write_text(f"# Document {d}\n\n" + "\n\n".join(paragraphs))


def stored_texts(data: Path) -> list[str]:
    db = data / "instances" / "default" / "index" / "index.sqlite3"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT metadata FROM chunks ORDER BY id").fetchall()
    return [json.loads(m)["text"] for (m,) in rows]


async def run(
    docs: int, repeat: int, embedder_factory: EmbedderFactory | None = None
) -> dict[str, Any]:
    """Sync and bare-embedder runs alternate; their medians are compared."""
    work = Path(tempfile.mkdtemp(prefix="ragd-bench-ingest-"))
    make_corpus(work / "src", docs)
    sync_rates: list[float] = []
    raw_rates: list[float] = []
    chunks = 0
    for attempt in range(repeat):
        settings = Settings(data_dir=work / f"data{attempt}", source=str(work / "src"))
        async with Runtime(settings, Providers(settings, embedder_factory=embedder_factory)) as rt:
            await rt.instances.ensure_default()
            _, cfg = await rt.instances.get("default")
            embedder = await rt.providers.embedder(cfg)
            await embedder.embed_documents(["warm up the model"] * 8)
            t0 = time.perf_counter()
            result = await rt.sync("default")
            sync_s = time.perf_counter() - t0
            assert result.status == "completed", result.end_reason
            chunks = result.counts["chunks"]
            sync_rates.append(chunks / sync_s)
            texts = stored_texts(settings.data_dir)
            assert len(texts) == chunks
            t0 = time.perf_counter()
            await embedder.embed_documents(texts)  # the embedder batches on its own
            raw_rates.append(len(texts) / (time.perf_counter() - t0))
    sync_rate, raw_rate = statistics.median(sync_rates), statistics.median(raw_rates)
    return {
        "docs": docs,
        "chunks": chunks,
        "sync_chunks_per_s": round(sync_rate, 2),
        "raw_embed_texts_per_s": round(raw_rate, 2),
        "ratio": round(sync_rate / raw_rate, 3),
        "runs": {"sync": sync_rates, "raw": raw_rates},
        "machine": describe_machine(),
    }


def summary(result: dict[str, Any]) -> str:
    return (
        f"{result['chunks']} chunks from {result['docs']} documents: sync "
        f"{result['sync_chunks_per_s']} chunks/s, raw embedder {result['raw_embed_texts_per_s']} "
        f"texts/s, ratio {result['ratio']} (target >= 0.9)"
    )
