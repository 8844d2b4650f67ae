"""Classify a py-spy `--format raw` profile (collapsed stacks with counts) of a sync into the
stages of profile_sync.py; the forward pass is split further by torch op.

Usage: python bench/ingest_profile/pyspy_shares.py results/pyspy_sync_t1_cpu.txt.gz [--json out]
Without --idle the samples are CPU samples of every thread and process (extraction workers
included), so a share is a share of CPU time, not of wall time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter
from pathlib import Path

# (category, any of these substrings in the stack), first match wins.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("extraction (worker processes)", ("_worker_main",)),
    ("imports", ("_find_and_load",)),
    ("model.load (from_pretrained, tokenizer copies)", ("LocalEmbedder.__init__",)),
    ("embed.tokenize", ("PreTrainedTokenizerBase.__call__", "_batch_encode_plus", "encode_batch")),
    ("embed.pool", ("LocalEmbedder._pool",)),
    ("embed.forward: linear (sgemm)", ("THPVariable_linear", "_nn.linear", "Linear.forward")),
    (
        "embed.forward: attention (sdpa)",
        ("scaled_dot_product_attention", "sdpa_attention_forward", "flash_attention"),
    ),
    ("embed.forward: gelu", ("gelu", "GELU")),
    ("embed.forward: layer_norm", ("layer_norm", "LayerNorm")),
    ("embed.forward: other", ("BertModel.forward", "Module._call_impl")),
    ("embed.other", ("LocalEmbedder._embed",)),
    ("chunk.count_tokens", ("count_tokens",)),
    ("chunk.byte_ranges", ("byte_ranges",)),
    ("chunk.splitter", ("chunk_item", "split_text")),
    ("index.upsert (LocalIndex, FTS5)", ("_upsert_sync", "LocalIndex")),
    ("db.records (aiosqlite/SQLAlchemy)", ("aiosqlite", "sqlalchemy", "_connection_worker_thread")),
    ("extract.ipc (parent side)", ("isolate.py",)),
    ("fetch", ("fetch_object", "folder_source")),
    ("event loop / asyncio", ("asyncio/",)),
]


IDLE = (
    "select",
    "epoll_wait",
    "poll",
    "PyThread_acquire_lock_timed",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "sem_wait",
    "sem_timedwait",
    "_queue_SimpleQueue_get_impl",
    "Condition.wait",
    "nanosleep",
    "clock_nanosleep",
)


def classify(stack: str) -> str:
    named = [f for f in stack.split(";") if not f.startswith("0x")]
    leaf = named[-1].split(" (")[0] if named else ""
    if leaf in IDLE:
        return "idle (blocked in a wait)"
    if "gc_collect_main" in stack:
        return "python gc"
    for cat, keys in RULES:
        if any(k in stack for k in keys):
            return cat
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    raw = gzip.decompress(a.raw.read_bytes()) if a.raw.suffix == ".gz" else a.raw.read_bytes()
    for line in raw.decode(errors="replace").splitlines():
        m = re.match(r"(.*) (\d+)$", line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        counts[classify(stack)] += n
        t = re.search(r"thread \(\d+\)(: [^;]*)?", stack)
        threads[
            ("worker proc" if "_worker_main" in stack else (t.group(1) or "").strip(": ") or "?")
        ] += n
    idle = counts.pop("idle (blocked in a wait)", 0)
    total = sum(counts.values())
    print(f"{idle} samples blocked in waits left out")
    out = {k: {"samples": v, "share": round(v / total, 4)} for k, v in counts.most_common()}
    print(f"{total} samples")
    for k, v in out.items():
        print(f"{v['share'] * 100:6.1f} %  {v['samples']:7d}  {k}")
    print("by thread:", dict(threads.most_common(8)))
    if a.json:
        a.json.write_text(
            json.dumps({"samples": total, "shares": out, "threads": threads}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
