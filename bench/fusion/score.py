"""Score fusion variants offline on candidate lists dumped by dump.py.

Usage: .venv/bin/python bench/fusion/score.py /tmp/ragd-fusion/lists.json \
    [--json bench/fusion/results.json] [--renamings 20]

Every query is replayed through the real `search()` of rag_service/retrieve/search.py over an
index stand-in that returns the dumped lists (so candidate depth, the 0 match threshold and the
keyword normalisation are the pipeline's), and ranked and scored as `ragd eval` does
(rag_service/evaluation/run.py: depth 100, more chunks asked while chunks of one document leave
fewer than 100 documents; a document scores as its best chunk; metrics.py's nDCG@10). `fuse`
is swapped for each variant below. Three views:

- eval: what `ragd eval` measures (max_num_results 100, so each list is read 400 deep);
- top10: max_num_results 10 (lists read 50 deep), nDCG@10 of those 10, match threshold 0;
- service: the same with the instance default match threshold 0.4 on vector similarity.

`--renamings N` also replays old rrf and this code's rrf and max with chunk ids re-derived from N
other instance names, each list in its dumped order (the fusion alone) and re-sorted as the index
orders exact score ties (by id: only exact duplicates then differ), and reports the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rag_service.evaluation.metrics import mean_scores
from rag_service.evaluation.run import rank_documents
from rag_service.providers.protocols import Filter, Match
from rag_service.retrieve import search as search_mod
from rag_service.retrieve.search import RRF_K, RetrievalOptions, ScoredChunk

Fuse = Callable[[Sequence[Match], Sequence[Match], Literal["rrf", "max"]], list[ScoredChunk]]
REAL_FUSE: Fuse = search_mod.fuse


# ---- the index stand-in ------------------------------------------------------------------


class ListsIndex:
    """Answers query/keyword_query with one query's dumped lists."""

    def __init__(self, lists: Mapping[str, list[list[Any]]], depth: int) -> None:
        self.lists, self.depth = lists, depth

    def _matches(self, name: str, k: int) -> list[Match]:
        rows = self.lists[name]
        if k > self.depth and len(rows) >= self.depth:
            raise RuntimeError(f"asked {k} > dumped depth {self.depth}: dump deeper")
        return [Match(cid, score, {"filename": doc, "item_id": cid.rsplit(":", 1)[0]})
                for cid, doc, score in rows[:k]]  # fmt: skip

    async def query(self, vector: Any, top_k: int, filter: Filter | None = None) -> list[Match]:
        return self._matches("vector", top_k)

    async def keyword_query(
        self, text: str, top_k: int, filter: Filter | None = None, match_mode: str = "or"
    ) -> list[Match]:
        return self._matches(f"keyword_{match_mode}", top_k)


class NoEmbedder:
    async def embed_query(self, text: str) -> list[float]:
        return []


# ---- fusion variants (each a drop-in for search.fuse) ---------------------------------------


_collect = search_mod.collect


def _minmax(scores: Sequence[float]) -> tuple[float, float]:
    if not scores:
        return 0.0, 1.0
    lo, hi = min(scores), max(scores)
    return lo, (hi - lo) or 1.0


def normalised(
    c: ScoredChunk, v: tuple[float, float], k: tuple[float, float]
) -> tuple[float, float]:
    """Min-max normalised (vector, keyword) scores over the candidates; 0 when absent."""
    nv = (c.vector_score - v[0]) / v[1] if c.vector_score is not None else 0.0
    nk = (c.keyword_score - k[0]) / k[1] if c.keyword_score is not None else 0.0
    return nv, nk


def rrf_old(
    vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
) -> list[ScoredChunk]:
    """The code before issue 17: RRF, ties by chunk id."""
    chunks = _collect(vector, keyword)
    lists = int(bool(vector)) + int(bool(keyword))
    for c in chunks.values():
        rrf = sum(1.0 / (RRF_K + r) for r in (c.vector_rank, c.keyword_rank) if r)
        c.score, c.fusion_method = rrf * (RRF_K + 1) / max(lists, 1), "rrf"
    return sorted(chunks.values(), key=lambda c: (-c.score, c.id))


def max_old(
    vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
) -> list[ScoredChunk]:
    """The code before issue 17: max(cosine, keyword / best keyword), ties by chunk id."""
    chunks = _collect(vector, keyword)
    top = max((m.score for m in keyword), default=1.0) or 1.0
    for c in chunks.values():
        c.score = max(c.vector_score or 0.0, (c.keyword_score or 0.0) / top)
        c.fusion_method = "max"
    return sorted(chunks.values(), key=lambda c: (-c.score, c.id))


def rrf_tie(tiebreak: str, k: int = RRF_K) -> Fuse:
    """RRF with ties broken by evidence instead of id."""

    def fuse(
        vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
    ) -> list[ScoredChunk]:
        chunks = _collect(vector, keyword)
        lists = int(bool(vector)) + int(bool(keyword))
        v = _minmax([m.score for m in vector])
        kw = _minmax([m.score for m in keyword])
        keys: dict[str, tuple[float, ...]] = {}
        for c in chunks.values():
            rrf = sum(1.0 / (k + r) for r in (c.vector_rank, c.keyword_rank) if r)
            c.score, c.fusion_method = rrf * (k + 1) / max(lists, 1), "rrf"
            nv, nk = normalised(c, v, kw)
            best_rank = min(r for r in (c.vector_rank, c.keyword_rank) if r)
            vs = c.vector_score if c.vector_score is not None else -2.0
            ks = c.keyword_score or 0.0
            keys[c.id] = {
                "sumnorm": (-(nv + nk), best_rank, -vs, -ks),
                "maxnorm": (-max(nv, nk), -(nv + nk), best_rank, -vs, -ks),
                "bestrank": (best_rank, -(nv + nk), -vs, -ks),
                "vector": (-vs, -ks),
                "keyword": (-ks, -vs),
            }[tiebreak]
        return sorted(chunks.values(), key=lambda c: (-c.score, *keys[c.id], c.id))

    return fuse


def cc(alpha: float = 0.5, norm: str = "minmax") -> Fuse:
    """Convex combination alpha * vector + (1 - alpha) * keyword of normalised scores
    (minmax over the candidates, or `max`: divided by the best), ties by evidence."""

    def fuse(
        vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
    ) -> list[ScoredChunk]:
        chunks = _collect(vector, keyword)
        if norm == "minmax":
            v = _minmax([m.score for m in vector])
            kw = _minmax([m.score for m in keyword])
        else:
            v = (0.0, max((m.score for m in vector), default=1.0) or 1.0)
            kw = (0.0, max((m.score for m in keyword), default=1.0) or 1.0)
        w = alpha if vector and keyword else (1.0 if vector else 0.0)
        for c in chunks.values():
            nv, nk = normalised(c, v, kw)
            c.score, c.fusion_method = w * nv + (1 - w) * nk, "cc"
        return sorted(
            chunks.values(),
            key=lambda c: (-c.score, -(c.vector_score or -2.0), -(c.keyword_score or 0.0), c.id),
        )

    return fuse


def max_tie(norm: str = "old") -> Fuse:
    """max fusion with ties by evidence; norm old: cosine vs keyword / best keyword;
    minmax: the max of the two min-max normalised scores."""

    def fuse(
        vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
    ) -> list[ScoredChunk]:
        chunks = _collect(vector, keyword)
        v = _minmax([m.score for m in vector])
        kw = _minmax([m.score for m in keyword])
        top = max((m.score for m in keyword), default=1.0) or 1.0
        keys: dict[str, tuple[float, ...]] = {}
        for c in chunks.values():
            nv, nk = normalised(c, v, kw)
            if norm == "old":
                c.score = max(c.vector_score or 0.0, (c.keyword_score or 0.0) / top)
            else:
                c.score = max(nv, nk)
            c.fusion_method = "max"
            keys[c.id] = (-(nv + nk), -(c.vector_score or -2.0), -(c.keyword_score or 0.0))
        return sorted(chunks.values(), key=lambda c: (-c.score, *keys[c.id], c.id))

    return fuse


def _zstats(scores: Sequence[float]) -> tuple[float, float]:
    if len(scores) < 2:
        return (scores[0] - 1.0 if scores else 0.0), 1.0
    mu = statistics.fmean(scores)
    return mu, statistics.pstdev(scores, mu) or 1.0


def zfuse(combine: str = "sum", impute: str = "min") -> Fuse:
    """CombSUM / CombMAX of z-scores (each list standardised over its candidates); a chunk
    missing from a list gets that list's lowest z (impute min) or 0 (impute zero)."""

    def fuse(
        vector: Sequence[Match], keyword: Sequence[Match], method: Any, vector_pool: Any = None
    ) -> list[ScoredChunk]:
        chunks = _collect(vector, keyword)
        vs = [m.score for m in vector]
        ks = [m.score for m in keyword]
        v, kw = _zstats(vs), _zstats(ks)
        vmin = (min(vs) - v[0]) / v[1] if vs else 0.0
        kmin = (min(ks) - kw[0]) / kw[1] if ks else 0.0
        if impute == "zero":
            vmin = kmin = 0.0
        for c in chunks.values():
            zv = (c.vector_score - v[0]) / v[1] if c.vector_score is not None else vmin
            zk = (c.keyword_score - kw[0]) / kw[1] if c.keyword_score is not None else kmin
            c.score = zv + zk if combine == "sum" else max(zv, zk)
            c.fusion_method = f"z{combine}"
        return sorted(
            chunks.values(),
            key=lambda c: (-c.score, -(c.vector_score or -2.0), -(c.keyword_score or 0.0), c.id),
        )

    return fuse


# ---- replay and score ----------------------------------------------------------------------


async def ranked(
    lists: Mapping[str, list[list[Any]]], depth: int, dumped: int, opts: RetrievalOptions
) -> list[str]:
    """run.ranked_documents over the stand-in index (doc ids are the file names here)."""
    index, want = ListsIndex(lists, dumped), depth
    while True:
        asked = dataclasses.replace(opts, max_num_results=want)
        chunks = await search_mod.search(NoEmbedder(), index, "", asked)  # type: ignore[arg-type]
        docs = rank_documents(chunks, {c.key: c.key for c in chunks})
        if len(docs) >= depth or len(chunks) < want:
            return docs[:depth]
        want *= 2


# view -> (documents ranked, vector match threshold)
VIEWS = {"eval": (100, 0.0), "top10": (10, 0.0), "service": (10, 0.4)}


def run_method(
    qset: Mapping[str, Any], dumped: int, mode: str, fuse: Fuse | None, view: str, kw_mode: str
) -> dict[str, float]:
    depth, threshold = VIEWS[view]
    retrieval = "hybrid" if fuse is not None else mode
    opts = RetrievalOptions(retrieval, match_threshold=threshold, keyword_match_mode=kw_mode)  # type: ignore[arg-type]
    search_mod.fuse = fuse or REAL_FUSE  # type: ignore[assignment]
    try:
        rankings = {
            q: asyncio.run(ranked(qset["lists"][q], depth, dumped, opts)) for q in qset["queries"]
        }
    finally:
        search_mod.fuse = REAL_FUSE  # type: ignore[assignment]
    return mean_scores(rankings, qset["qrels"])


def renamed(qset: Mapping[str, Any], salt: str, resort: bool) -> dict[str, Any]:
    """The same lists with chunk ids as another instance name would derive them: every item id
    replaced by a salted hash; `resort`: each list re-sorted by (-score, id), as the index
    orders exact score ties (else each list keeps its order, isolating the fusion)."""

    def rid(cid: str) -> str:
        item, _, n = cid.rpartition(":")
        return f"{hashlib.sha1((salt + item).encode()).hexdigest()[:32]}:{n}"

    lists = {}
    for q, per in qset["lists"].items():
        lists[q] = {}
        for name, rows in per.items():
            new = [[rid(c), d, s] for c, d, s in rows]
            lists[q][name] = sorted(new, key=lambda r: (-r[2], r[0])) if resort else new
    return {**qset, "lists": lists}


METHODS: dict[str, tuple[str, Fuse | None]] = {
    "vector": ("vector", None),
    "keyword": ("keyword", None),
    "rrf (old: ties by id)": ("hybrid", rrf_old),
    "rrf, ties: sum of normalised scores": ("hybrid", rrf_tie("sumnorm")),
    "rrf, ties: max normalised score": ("hybrid", rrf_tie("maxnorm")),
    "rrf, ties: best rank": ("hybrid", rrf_tie("bestrank")),
    "rrf, ties: vector score": ("hybrid", rrf_tie("vector")),
    "rrf, ties: keyword score": ("hybrid", rrf_tie("keyword")),
    "max (old: ties by id)": ("hybrid", max_old),
    "max, ties by evidence": ("hybrid", max_tie("old")),
    "max of min-max normalised": ("hybrid", max_tie("minmax")),
    "cc 0.5 min-max": ("hybrid", cc(0.5, "minmax")),
    "cc 0.5 score/best": ("hybrid", cc(0.5, "max")),
    "cc 0.3 min-max": ("hybrid", cc(0.3, "minmax")),
    "cc 0.7 min-max": ("hybrid", cc(0.7, "minmax")),
    "z-score sum": ("hybrid", zfuse("sum")),
    "z-score max": ("hybrid", zfuse("max")),
    "z-score sum (missing: 0)": ("hybrid", zfuse("sum", "zero")),
}
CURRENT = ("this code: rrf", "this code: max")


def main(args: argparse.Namespace) -> None:
    data: dict[str, Any] = {"sets": {}}
    for path in args.lists:
        part = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("depth", part["depth"])
        data.setdefault("meta", part.get("meta"))
        assert part["depth"] == data["depth"], "dumps of different depths"
        data["sets"].update(part["sets"])
    if args.sets:
        data["sets"] = {n: data["sets"][n] for n in args.sets.split(",")}
    dumped = data["depth"]
    only = set(args.methods.split(",")) if args.methods else None
    out: dict[str, Any] = {"meta": data.get("meta", {}), "views": {}}
    for view in args.views.split(","):
        out["views"][view] = {}
        for name, qset in data["sets"].items():
            res: dict[str, dict[str, float]] = {}
            methods = {**METHODS, **{c: ("hybrid", _current(c[-3:])) for c in CURRENT}}
            for method, (mode, fuse) in methods.items():
                if only and method not in only and mode == "hybrid":
                    continue
                res[method] = run_method(qset, dumped, mode, fuse, view, args.keyword_match_mode)
                print(f"{view:5} {name:14} {method:38} nDCG@10 {res[method]['ndcg@10']:.4f}",
                      flush=True)  # fmt: skip
            out["views"][view][name] = res
    if args.renamings:
        spread: dict[str, Any] = {}
        for name, qset in data["sets"].items():
            spread[name] = {}
            for label, f in (
                ("rrf (old: ties by id)", rrf_old),
                *((c, _current(c[-3:])) for c in CURRENT),
            ):
                for resort in (False, True):
                    key = f"{label}, {'index ties re-sorted' if resort else 'index order kept'}"
                    vals = [
                        run_method(renamed(qset, f"instance-{i}", resort), dumped, "hybrid", f,
                                   "eval", args.keyword_match_mode)["ndcg@10"]
                        for i in range(args.renamings)
                    ]  # fmt: skip
                    spread[name][key] = {
                        "min": min(vals), "max": max(vals), "mean": statistics.fmean(vals)
                    }  # fmt: skip
                    print(f"renamed {name} {key}: {spread[name][key]}", flush=True)
        out["renamings"] = {"n": args.renamings, "ndcg@10": spread}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


def _current(method: str) -> Fuse:
    def fuse(
        vector: Sequence[Match], keyword: Sequence[Match], _: Any, vector_pool: Any = None
    ) -> list[ScoredChunk]:
        return REAL_FUSE(vector, keyword, method, vector_pool)  # type: ignore[arg-type]

    return fuse


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lists", type=Path, nargs="+")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--json", type=Path)
    p.add_argument("--views", default="eval,top10")
    p.add_argument("--methods", help="comma-separated hybrid methods (default: all)")
    p.add_argument("--keyword-match-mode", default="or")
    p.add_argument("--renamings", type=int, default=0)
    main(p.parse_args())
