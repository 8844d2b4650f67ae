"""Whole syncs (profile_sync.py, each in a fresh process, as `ragd eval` times them), variants
interleaved round by round: ragd as is (torch, torch_threads() = 1 thread here), 2 threads
(OMP_NUM_THREADS=2), and 2 threads with the embedder's forward pass in onnxruntime (fp32-opt,
int8 from onnx_bench.py), and int8 with ragd's 1 thread. Reports indexing seconds, the ratio
to ragd as is, and each run's stage shares (timers).

Usage: python bench/ingest_profile/sync_ab.py [--beir /tmp/negc200] [--rounds 3]
         [--work /tmp/ragd-onnx] [--out sync_ab]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc200"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragd-onnx"))
    ap.add_argument("--out", default="sync_ab")
    a = ap.parse_args()
    variants = {
        "ragd as is (torch, 1 thread)": ({}, []),
        "torch, 2 threads": ({"OMP_NUM_THREADS": "2"}, []),
        "onnx fp32-opt, 2 threads": (
            {"OMP_NUM_THREADS": "2"},
            ["--onnx", str(a.work / "minilm-pooled-eager-opt.onnx")],
        ),
        "onnx int8, 1 thread": (
            {},
            ["--onnx", str(a.work / "minilm-pooled-eager-opt-int8-pc.onnx")],
        ),
        "onnx int8, 2 threads": (
            {"OMP_NUM_THREADS": "2"},
            ["--onnx", str(a.work / "minilm-pooled-eager-opt-int8-pc.onnx")],
        ),
    }
    names = list(variants)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            env_extra, args = variants[name]
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env_extra
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [
                    sys.executable,
                    str(HERE / "profile_sync.py"),
                    "--beir",
                    str(a.beir),
                    "--json",
                    f.name,
                    *args,
                ]
                subprocess.run(
                    cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                res = json.loads(Path(f.name).read_text())
            res["loadavg"] = os.getloadavg()[0]
            runs[name].append(res)
            print(
                f"round {r + 1} {name}: indexed in {res['indexed_s']:.1f} s "
                f"(load {res['loadavg']:.2f})",
                flush=True,
            )
    base = names[0]
    summary = {}
    for name in names:
        secs = [x["indexed_s"] for x in runs[name]]
        ratios = [
            b["indexed_s"] / x["indexed_s"] for b, x in zip(runs[base], runs[name], strict=True)
        ]
        shares: dict[str, float] = {}
        for x in runs[name]:
            for k, v in x["share"].items():
                shares[k] = shares.get(k, 0.0) + v / len(runs[name])
        summary[name] = {
            "median_indexed_s": round(statistics.median(secs), 2),
            "ratio_to_as_is": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "mean_shares": {
                k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
            },
        }
        print(name, json.dumps({k: v for k, v in summary[name].items() if k != "mean_shares"}))
        print("   shares:", {k: v for k, v in list(summary[name]["mean_shares"].items())[:8]})
    common.save(
        a.out,
        {
            "machine": common.machine(),
            "beir": str(a.beir),
            "rounds": a.rounds,
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
