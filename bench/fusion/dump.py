"""Index a BEIR corpus once, then dump every query's vector and keyword candidate lists.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/fusion/dump.py \
    --beir /work/shared/data/beir/negconstraint --work /tmp/ragd-fusion/negconstraint \
    --sets bench/fusion/sets.json --out /tmp/ragd-fusion/lists.json [--depth 1600]

The corpus is indexed the way `ragd eval` indexes it (rag_service/evaluation/run.py's
write_corpus + ingest_corpus on a local instance), into `--work`, which is kept: a second run
syncs it again without re-embedding. For every query of every set (the BEIR folder's own judged
queries are the set named after the folder; `--sets` adds query sets made by make_sets.py) the
vector top `depth` (exact cosine) and keyword top `depth` (BM25, match modes `or` and `and`) are
written as [chunk id, document id, raw score] best first, with the qrels, so that fusion
variants can be scored offline (score.py) without indexing again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rag_service.config import Settings
from rag_service.evaluation.beir import load_beir, write_corpus
from rag_service.evaluation.run import INSTANCE, ingest_corpus
from rag_service.runtime import Runtime


def load_sets(beir_folder: Path, extra: Path | None, only: list[str]) -> dict[str, dict[str, Any]]:
    beir = load_beir(beir_folder)
    sets: dict[str, dict[str, Any]] = {
        beir_folder.name: {"queries": beir.queries, "qrels": beir.qrels}
    }
    if extra is not None:
        sets.update(json.loads(extra.read_text(encoding="utf-8")))
    return {n: s for n, s in sets.items() if not only or n in only}


async def main(args: argparse.Namespace) -> None:
    beir = load_beir(args.beir)
    sets = load_sets(args.beir, args.sets, args.only.split(",") if args.only else [])
    work: Path = args.work
    settings = Settings().model_copy(
        update={"data_dir": work / "data", "database_url": None, "backend": "local"}
    )
    doc_of = write_corpus(beir, work / "corpus")
    out: dict[str, Any] = {"depth": args.depth, "sets": {}}
    async with Runtime(settings) as rt:
        started = time.perf_counter()

        def tick(stage: str, done: int, total: int | None) -> None:
            if done % 500 == 0:
                print(f"{stage} {done}/{total}", file=sys.stderr, flush=True)

        await ingest_corpus(rt, beir, work / "corpus", tick)  # a kept index: only re-synced
        _, cfg = await rt.instances.get(INSTANCE)
        embedder = await rt.providers.embedder(cfg)
        index = await rt.providers.index(INSTANCE, cfg)
        chunks = await index.count()
        print(f"indexed: {chunks} chunks in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        out["meta"] = {
            "embedding_model": embedder.model_id,
            "chunk_size": cfg.chunk_size,
            "chunk_overlap": cfg.chunk_overlap,
            "chunks": chunks,
            "documents": len(beir.corpus),
        }

        def rows(hits: list[Any]) -> list[list[Any]]:
            return [[h.id, doc_of.get(str(h.metadata.get("filename", ""))), h.score] for h in hits]

        for name, qset in sets.items():
            lists: dict[str, Any] = {}
            for qid, text in qset["queries"].items():
                qvec = await embedder.embed_query(text)
                lists[qid] = {
                    "vector": rows(await index.query(qvec, args.depth)),
                    "keyword_or": rows(await index.keyword_query(text, args.depth, None, "or")),
                    "keyword_and": rows(await index.keyword_query(text, args.depth, None, "and")),
                }
            out["sets"][name] = {"queries": qset["queries"], "qrels": qset["qrels"], "lists": lists}
            print(f"{name}: {len(lists)} queries dumped", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--beir", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True, help="kept data dir and corpus folder")
    p.add_argument("--sets", type=Path, help="extra query sets (make_sets.py)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", help="comma-separated set names (default: all)")
    p.add_argument("--depth", type=int, default=1600)
    asyncio.run(main(p.parse_args()))
