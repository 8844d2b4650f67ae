"""Profile one real sync of a BEIR folder through ragd's own path (what `ragd eval` times as
"indexed in": rag_service.evaluation.run.ingest_corpus in a fresh Runtime), and split its wall
time into stages.

--profile timers (default): wraps the pipeline's functions (in this process only; nothing in
  rag_service/ is edited) and records every call as an interval on one clock; the sync's wall
  time is then attributed instant by instant to the most specific stage running (priority order
  in PRIORITY), so the shares add up to 100 %.
--profile cprofile: cProfile of the event-loop thread plus one profile per `asyncio.to_thread`
  call (chunking, embedding, index writes), merged; prints the top functions.
--profile none: just the sync (for py-spy: see README.md).

Usage: python bench/ingest_profile/profile_sync.py --beir /tmp/negc400 [--profile timers]
         [--threads N] [--json out.json] [--pstats out.pstats]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import inspect
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Most specific first: an instant is charged to the first of these that is running then.
PRIORITY = [
    "embed.tokenize",  # HF fast tokenizer __call__ on a batch (padding, truncation, tensors)
    "embed.forward",  # BertModel forward (torch)
    "embed.pool",  # mean pooling + L2 normalisation
    "embed.other",  # rest of LocalEmbedder._embed (sorting, set_num_threads, copies)
    "chunk.count_tokens",  # LocalEmbedder.count_tokens called by the splitter
    "chunk.byte_ranges",  # chunk_offsets.byte_ranges
    "chunk.splitter",  # rest of chunk_item (langchain RecursiveCharacterTextSplitter)
    "index.upsert",  # LocalIndex._upsert_sync (chunks table + FTS5 triggers, commit FULL)
    "index.delete",  # LocalIndex.delete
    "db.records",  # rag_service.records coroutines (items, jobs, logs via aiosqlite)
    "extract.wait",  # extract_isolated outstanding (worker processes)
    "fetch",  # fetch_object (folder source read)
    "list",  # list_source
    "model.load",  # Providers.embedder (loads the model on first use)
]

INTERVALS: list[tuple[str, float, float]] = []
_LOCK = threading.Lock()
_inside_records: contextvars.ContextVar[bool] = contextvars.ContextVar("in_rec", default=False)


def _note(cat: str, t0: float) -> None:
    t1 = time.perf_counter()
    with _LOCK:
        INTERVALS.append((cat, t0, t1))


def timed_sync(cat: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _note(cat, t0)

    return wrapper


BY_NAME: dict[str, list[float]] = defaultdict(list)  # records function -> call durations


def timed_async(cat: str, fn: Any, guard: bool = False) -> Any:
    @functools.wraps(fn)
    async def wrapper(*a: Any, **k: Any) -> Any:
        if guard and _inside_records.get():
            return await fn(*a, **k)
        token = _inside_records.set(True) if guard else None
        t0 = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            _note(cat, t0)
            if guard:
                BY_NAME[fn.__name__].append(time.perf_counter() - t0)
            if token is not None:
                _inside_records.reset(token)

    return wrapper


class _TimedTokenizer:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._inner(*a, **k)
        finally:
            _note("embed.tokenize", t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install_timers() -> None:
    from rag_service import records
    from rag_service.ingest import chunk, items, sync
    from rag_service.providers import local_embedder, local_index
    from rag_service.registry import Providers

    for name, fn in list(vars(records).items()):
        if inspect.iscoroutinefunction(fn) and getattr(fn, "__module__", "") == records.__name__:
            setattr(records, name, timed_async("db.records", fn, guard=True))
    items.extract_isolated = timed_async("extract.wait", items.extract_isolated)
    items.fetch_object = timed_async("fetch", items.fetch_object)
    sync.list_source = timed_async("list", sync.list_source)
    chunk.byte_ranges = timed_sync("chunk.byte_ranges", chunk.byte_ranges)
    items.chunk_item = timed_sync("chunk.splitter", items.chunk_item)
    le = local_embedder.LocalEmbedder
    le.count_tokens = timed_sync("chunk.count_tokens", le.count_tokens)
    le._pool = timed_sync("embed.pool", le._pool)
    le._embed = timed_sync("embed.other", le._embed)
    init = le.__init__

    def patched_init(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        self._batch_tokenizer = _TimedTokenizer(self._batch_tokenizer)
        starts: dict[int, float] = {}

        def pre(mod: Any, args: Any, kwargs: Any) -> None:
            starts[threading.get_ident()] = time.perf_counter()

        def post(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
            _note("embed.forward", starts.pop(threading.get_ident()))

        self.model.register_forward_pre_hook(pre, with_kwargs=True)
        self.model.register_forward_hook(post, with_kwargs=True)

    le.__init__ = patched_init
    li = local_index.LocalIndex
    li._upsert_sync = timed_sync("index.upsert", li._upsert_sync)
    li.delete = timed_async("index.delete", li.delete)
    Providers.embedder = timed_async("model.load", Providers.embedder)


def use_onnx(path: Path) -> None:
    """What-if: LocalEmbedder._embed runs an ONNX export (onnx_bench.py) in onnxruntime with
    the embedder's own thread count, same tokenizer, sorted batches and max length."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from onnx_bench import OrtEmbedder

    from rag_service.providers import local_embedder

    le = local_embedder.LocalEmbedder
    sessions: dict[int, Any] = {}

    def _embed(self: Any, texts: list[str]) -> Any:
        ort = sessions.get(id(self))
        if ort is None:
            ort = sessions[id(self)] = OrtEmbedder(
                path, self._batch_tokenizer, self.max_tokens, self.threads
            )
            run = ort.session.run

            def timed_run(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return run(*a, **k)
                finally:
                    _note("embed.forward", t0)

            ort.session = type("S", (), {"run": staticmethod(timed_run)})()
        with self._torch_lock:
            return ort.embed(texts, self.batch_size)

    le._embed = _embed


def attribute(t_start: float, t_end: float) -> dict[str, float]:
    """Seconds of [t_start, t_end] charged to each category (exclusive, by PRIORITY)."""
    rank = {c: i for i, c in enumerate(PRIORITY)}
    events: list[tuple[float, int, int]] = []
    for cat, a, b in INTERVALS:
        a, b = max(a, t_start), min(b, t_end)
        if b > a:
            events.append((a, 1, rank[cat]))
            events.append((b, -1, rank[cat]))
    events.sort()
    active = [0] * len(PRIORITY)
    out: dict[str, float] = defaultdict(float)
    prev = t_start
    for t, delta, r in events:
        if t > prev:
            cur = next((i for i, n in enumerate(active) if n > 0), None)
            out[PRIORITY[cur] if cur is not None else "other"] += t - prev
            prev = t
        active[r] += delta
    out["other"] += max(0.0, t_end - prev)
    return dict(out)


def summed(cat: str) -> tuple[int, float]:
    xs = [b - a for c, a, b in INTERVALS if c == cat]
    return len(xs), sum(xs)


async def run_sync(folder: Path) -> dict[str, Any]:
    from rag_service.config import Settings
    from rag_service.evaluation.beir import load_beir, write_corpus
    from rag_service.evaluation.run import ingest_corpus
    from rag_service.registry import Providers
    from rag_service.runtime import Runtime

    beir = load_beir(folder)
    with tempfile.TemporaryDirectory(prefix="ragd-prof-") as tmp:
        st = Settings().model_copy(
            update={"data_dir": Path(tmp) / "data", "database_url": None, "backend": "local"}
        )
        write_corpus(beir, Path(tmp) / "corpus")
        async with Runtime(st, Providers(st)) as rt:
            t0 = time.perf_counter()
            chunks = await ingest_corpus(rt, beir, Path(tmp) / "corpus", lambda *a: None)
            t1 = time.perf_counter()
    return {"documents": len(beir.corpus), "chunks": chunks, "t0": t0, "t1": t1}


def to_thread_profiled(profiles: list[Any]) -> Any:
    import cProfile

    orig = asyncio.to_thread

    async def to_thread(func: Any, /, *a: Any, **k: Any) -> Any:
        def run() -> Any:
            prof = cProfile.Profile()
            prof.enable()
            try:
                return func(*a, **k)
            finally:
                prof.disable()
                with _LOCK:
                    profiles.append(prof)

        return await orig(run)

    return to_thread


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc400"))
    ap.add_argument("--profile", choices=["timers", "cprofile", "none"], default="timers")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the embedder")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pstats", type=Path, default=None)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--onnx", type=Path, default=None, help="embed with this ONNX model instead")
    a = ap.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    load_start = time.perf_counter()
    if a.onnx:
        use_onnx(a.onnx)
    if a.profile == "timers":
        install_timers()
    if a.profile == "cprofile":
        import cProfile
        import pstats

        profiles: list[Any] = []
        asyncio.to_thread = to_thread_profiled(profiles)  # type: ignore[assignment]
        main_prof = cProfile.Profile()
        main_prof.enable()
        res = asyncio.run(run_sync(a.beir))
        main_prof.disable()
        stats = pstats.Stats(main_prof)
        for p in profiles:
            stats.add(p)
        if a.pstats:
            stats.dump_stats(str(a.pstats))
        wall = res["t1"] - res["t0"]
        print(
            f"indexed {res['documents']} docs / {res['chunks']} chunks in {wall:.1f} s (cProfile)"
        )
        stats.sort_stats("tottime").print_stats(a.top)
        stats.sort_stats("cumulative").print_stats(a.top)
        return
    res = asyncio.run(run_sync(a.beir))
    wall = res["t1"] - res["t0"]
    out: dict[str, Any] = {
        "documents": res["documents"],
        "chunks": res["chunks"],
        "indexed_s": round(wall, 3),
        "passages_per_s": round(res["documents"] / wall, 2),
        "threads_env": os.environ.get("OMP_NUM_THREADS"),
        "onnx": str(a.onnx) if a.onnx else None,
        "startup_s": round(res["t0"] - load_start, 2),
    }
    if a.profile == "timers":
        shares = attribute(res["t0"], res["t1"])
        out["wall_s"] = {k: round(v, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
        out["share"] = {k: round(v / wall, 4) for k, v in out["wall_s"].items()}
        out["calls"] = {
            c: {"n": n, "summed_s": round(s, 3)} for c in PRIORITY for n, s in [summed(c)]
        }
        out["records_calls"] = {
            k: {
                "n": len(v),
                "summed_s": round(sum(v), 3),
                "mean_ms": round(1000 * sum(v) / len(v), 2),
            }
            for k, v in sorted(BY_NAME.items(), key=lambda kv: -sum(kv[1]))
        }
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
