"""Tables of the `ragd eval` results in bench/onnx/results (eval_runtime.py / run_evals.sh):
nDCG@10 per mode per runtime with the difference to torch, and "indexed in" per run.

Usage: python bench/onnx/summarise.py [results/*.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("torch", "onnx", "onnx-int8")


def load(paths: list[Path]) -> dict[str, dict]:
    runs = {}
    for path in sorted(paths):
        report = json.loads(path.read_text())
        if "meta" in report:
            runs[path.stem] = report
    return runs


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or list(RESULTS.glob("*.json"))
    runs = load(paths)
    first = {rt: runs[rt] for rt in ORDER if rt in runs}  # one run per runtime for quality
    modes = [m for m in next(iter(first.values())) if m not in ("meta", "bench")]
    print("| mode | " + " | ".join(first) + " | onnx - torch | int8 - torch |")
    print("|---" * (len(first) + 3) + "|")
    for mode in modes:
        score = {rt: r[mode]["ndcg@10"] for rt, r in first.items()}
        diff = [
            f"{score[rt] - score['torch']:+.4f}" if rt in score and "torch" in score else "-"
            for rt in ("onnx", "onnx-int8")
        ]
        print(f"| {mode} | " + " | ".join(f"{v:.4f}" for v in score.values()), end="")
        print(" | " + " | ".join(diff) + " |")
    print()
    print("| run | model id | indexed in s | vector query s | load 1-min start/end | wall s |")
    print("|---|---|---:|---:|---|---:|")
    for name, r in runs.items():
        meta, bench = r["meta"], r.get("bench")
        avg = f"{bench['loadavg_start'][0]:.1f} / {bench['loadavg_end'][0]:.1f}" if bench else "-"
        print(
            f"| {name} | {meta['settings']['embedding_model']} | {meta['ingest_seconds']} | "
            f"{meta['query_seconds']['vector']} | {avg} | {bench['wall_s'] if bench else '-'} |"
        )
    print()
    print("indexed-in ratio torch / runtime, same round (> 1: faster than torch):")
    for suffix in ("", ".run2", ".run3"):
        base = runs.get("torch" + suffix)
        if base is None:
            continue
        ratios = {
            rt: round(
                base["meta"]["ingest_seconds"] / runs[rt + suffix]["meta"]["ingest_seconds"], 2
            )
            for rt in ORDER
            if rt + suffix in runs
        }
        print(f"  round {suffix or '.run1'}: {ratios}")


if __name__ == "__main__":
    main()
