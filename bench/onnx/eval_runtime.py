"""`ragd eval` with one embedding runtime, the ONNX export cached outside the eval's temp dir.

`ragd eval` indexes into a temporary data dir (rag_service.evaluation.run), so the ONNX files
that OnnxEmbedder caches in `<data_dir>/models/onnx` would be exported again by every eval
(~20-30 s counted in "indexed in"). This runs the same CLI command (`rag_service.cli.app`,
`eval --beir ... --keyword-match-mode or --json ...`) with `cli.make_providers` swapped for
Providers whose local embedder keeps its ONNX files in --cache, built beforehand by `--prepare`
in a separate process so that the eval process imports and loads exactly what ragd would.
Everything else (settings from RAGD_* variables, the pipeline, the metrics) is ragd's.

Usage:
  RAGD_EMBEDDING_RUNTIME=onnx-int8 python bench/onnx/eval_runtime.py --prepare
  RAGD_EMBEDDING_RUNTIME=onnx-int8 RAGD_DATA_DIR=$(mktemp -d) \
      python bench/onnx/eval_runtime.py --beir ../shared/data/beir/negconstraint \
      --json bench/onnx/results/onnx-int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

CACHE = Path("/tmp/ragd-onnx-bench/models/onnx")  # Providers puts it in <data_dir>/models/onnx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--prepare", action="store_true", help="export into --cache, then exit")
    a = ap.parse_args()

    from rag_service import cli
    from rag_service.config import Settings
    from rag_service.registry import Providers

    runtime = Settings().embedding_runtime
    if a.prepare:
        if runtime != "torch":
            from rag_service.providers.onnx_embedder import OnnxEmbedder

            t0 = time.perf_counter()
            e = OnnxEmbedder(cache_dir=a.cache, int8=runtime == "onnx-int8")
            print(f"{runtime}: built {e.built} in {time.perf_counter() - t0:.1f} s: {e.onnx_path}")
        return

    def pinned_cache(settings: Settings) -> Providers:
        pinned = settings.model_copy(update={"data_dir": a.cache.parent.parent})
        return Providers(settings, embedder_factory=Providers(pinned).local_embedder)

    assert a.cache.parts[-2:] == ("models", "onnx"), "--cache must end in models/onnx"
    cli.make_providers = pinned_cache
    load0, t0 = os.getloadavg(), time.perf_counter()
    args = ["eval", "--beir", str(a.beir), "--keyword-match-mode", "or", "--json", str(a.json)]
    cli.app(args, standalone_mode=False)
    report = json.loads(a.json.read_text())
    report["bench"] = {
        "embedding_runtime": runtime,
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "cpus": len(os.sched_getaffinity(0)),
        "onnx_cache": str(a.cache) if runtime != "torch" else None,
    }
    a.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
