"""Ingestion against Cloudflare's rate limits: a `cloudflare` instance syncs a generated corpus
through the fake Cloudflare API (tests/cloudflare/fake_api.py, served over HTTP from its own
thread), which enforces per-task request limits. The client is given the same limits. Reported:
each task's steady-state request rate (after the first window, whose burst the sliding window
allows) against its limit, the share of calls answered 429, and chunks/s.
Target: the binding task runs at >= 0.9 of its limit with < 1% of calls answered 429.

The documented per-minute limits are kept as rates but counted over a `--period` of 10 s, so
that a one-minute run spans several windows. At the documented limits nothing binds on a small
machine (a sync sends ~1 embedding call per 100 chunks and ~1 Vectorize write per window):
`--limit-scale 0.01` divides every limit by 100 so that the client's pacing is measured at a
limit.

Usage: python bench/cloudflare_ingest.py [--docs 900] [--period 10] [--limit-scale 1]
Writes bench/results/cloudflare_ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import uvicorn

from bench.ingest import make_corpus
from bench.machine import describe_machine, save_result
from rag_service.config import Settings
from rag_service.providers.cloudflare import CloudflareAPI, RateLimits
from rag_service.runtime import Runtime
from tests.cloudflare.fake_api import DEFAULT_LIMITS, FakeCloudflare
from tests.serving import free_port


@contextmanager
def serve_in_thread(app: FakeCloudflare) -> Iterator[str]:
    """The fake on its own thread and event loop, so it does not share the sync's loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def steady_rates(fake: FakeCloudflare, start: float, end: float, period: float) -> dict[str, Any]:
    """Per task: accepted requests per second after the first window, against the limit."""
    out: dict[str, Any] = {}
    for task in sorted({r.task for r in fake.requests if r.task}):
        calls = [r for r in fake.requests if r.task == task]
        late = [r for r in calls if r.at >= start + period and r.status != 429]
        span = end - start - period
        rate = len(late) / span if span > 0 else 0.0
        limit = fake.limits[task] / period
        out[task] = {
            "calls": len(calls),
            "answered_429": sum(r.status == 429 for r in calls),
            "steady_requests_per_s": round(rate, 3),
            "limit_per_s": round(limit, 3),
            "utilisation": round(rate / limit, 3),
        }
    return out


async def run(docs: int, period: float, limit_scale: float = 1.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ragd-bench-cf-"))
    make_corpus(work / "src", docs)
    scale = period / 60.0 * limit_scale
    limits = {task: max(1, round(n * scale)) for task, n in DEFAULT_LIMITS.items()}
    fake = FakeCloudflare(limits=limits, period=period)
    with serve_in_thread(fake) as url:
        settings = Settings(
            data_dir=work / "data",
            backend="cloudflare",
            cloudflare_account_id=fake.account,
            cloudflare_api_token=fake.token,
            cloudflare_api_base=url,
        )
        async with Runtime(settings) as rt:
            # The process shares one client per settings: give it the fake's limits.
            CloudflareAPI.for_settings(settings).limits = RateLimits(**limits, period=period)
            await rt.instances.ensure("bench", str(work / "src"))
            start = time.monotonic()
            result = await rt.sync("bench")
            end = time.monotonic()
            assert result.status == "completed", result.end_reason
            chunks = result.counts["chunks"]
    rates = steady_rates(fake, start, end, period)
    binding = max(rates, key=lambda t: rates[t]["utilisation"])
    total = sum(r["calls"] for r in rates.values())
    limited = sum(r["answered_429"] for r in rates.values())
    return {
        "docs": docs,
        "chunks": chunks,
        "seconds": round(end - start, 2),
        "chunks_per_s": round(chunks / (end - start), 2),
        "period_s": period,
        "limit_scale": limit_scale,
        "limits_per_period": limits,
        "client_limits": asdict(RateLimits(**limits, period=period)),
        "binding_task": binding,
        "binding_utilisation": rates[binding]["utilisation"],
        "share_429": round(limited / total, 5) if total else 0.0,
        "tasks": rates,
        "machine": describe_machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=900)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--limit-scale", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.docs, args.period, args.limit_scale))
    save_result("cloudflare_ingest", result)
    print(
        f"{result['chunks']} chunks from {result['docs']} documents in {result['seconds']} s "
        f"({result['chunks_per_s']} chunks/s); binding task {result['binding_task']} at "
        f"{result['binding_utilisation']} of its limit (target >= 0.9); "
        f"{result['share_429'] * 100:.2f}% of calls answered 429 (target < 1%)"
    )


if __name__ == "__main__":
    main()
