"""What a benchmark ran on, stored beside its numbers, and latency summaries."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path("bench") / "results"  # under the folder it is run from (the repo checkout)


def describe_machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg()[0],
    }


def save_result(name: str, result: dict[str, Any], results: Path = RESULTS) -> Path:
    """Write `<results>/<name>.json` (the result carries its machine description)."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of durations given in seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(ms.mean()), 3),
    }


def spread(ms: dict[str, float]) -> str:
    """`p50 .. ms, p95 .. ms, p99 .. ms` of a `percentiles_ms` result."""
    return ", ".join(f"{p} {ms[p]} ms" for p in ("p50", "p95", "p99"))
