"""`POST /search` latency over loopback at several concurrent clients, against an index of
random chunks, and what the service adds beyond embedding the query and querying the index."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar.types import ASGIApp

from rag_service.benchmarks.index import BenchProgress, fill_index, phrases
from rag_service.benchmarks.machine import describe_machine, percentiles_ms, spread
from rag_service.benchmarks.query_processes import ROUNDS, compare, serve_env, summary_lines
from rag_service.config import Settings
from rag_service.instance_registry import DEFAULT_INSTANCE
from rag_service.providers.protocols import Embedder, VectorIndex
from rag_service.query.options import retrieval_options
from rag_service.registry import EmbedderFactory, Providers
from rag_service.retrieve.search import RetrievalOptions
from rag_service.runtime import Runtime

CLIENTS = (1, 8, 32)
TOKEN = "bench-token"


@asynccontextmanager
async def loopback(app: Any) -> AsyncIterator[str]:
    """The base URL of `app` served by uvicorn on a free loopback port, in this event loop."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the benchmark server did not start")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def search(client: httpx.AsyncClient, query: str) -> float:
    """Seconds for one `POST /search` that found something (no score floor: random vectors
    are far from any query, yet the response should carry its usual ten chunks)."""
    body = {"query": query, "ranking_options": {"score_threshold": 0}}
    t0 = time.perf_counter()
    response = await client.post("/search", json=body)
    elapsed = time.perf_counter() - t0
    response.raise_for_status()
    if not response.json()["result"]["data"]:
        raise RuntimeError(f"/search found nothing for {query!r}")
    return elapsed


async def components(
    embedder: Embedder, index: VectorIndex, query: str, opts: RetrievalOptions
) -> tuple[float, float, float]:
    """Seconds to embed `query`, to query the vectors and to query the keywords, as
    `/search` does them."""
    t0 = time.perf_counter()
    vector = await embedder.embed_query(query)
    t1 = time.perf_counter()
    await index.query(vector, opts.candidates, opts.filters)
    t2 = time.perf_counter()
    if opts.retrieval_type == "hybrid":
        await index.keyword_query(query, opts.candidates, opts.filters, opts.keyword_match_mode)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


async def concurrent(
    client: httpx.AsyncClient, queries: Sequence[str], clients: int
) -> tuple[list[float], float]:
    """Each query once, `clients` at a time: per-request seconds and the wall time."""
    pending = iter(queries)

    async def one_client() -> list[float]:
        return [await search(client, q) for q in pending]

    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(one_client() for _ in range(clients)))
    return [t for times in per_client for t in times], time.perf_counter() - t0


async def run(
    app_factory: Callable[[Settings, Runtime], ASGIApp],
    chunks: int = 100_000,
    queries: int = 200,
    clients: Sequence[int] = CLIENTS,
    embedder_factory: EmbedderFactory | None = None,
    progress: BenchProgress | None = None,
    processes: bool = False,
    process_clients: int | None = None,
    process_rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Build the index, then time each query's embedding and index lookups right before its
    `/search` (one client: the paired difference is the overhead), then each concurrency.
    `app_factory`: the HTTP app to measure (the CLI passes the API's).

    `processes`: then, with the in-process runtime closed, serve the same data dir with one and
    with two `ragd serve` processes (interleaved rounds, `process_clients` clients: the largest
    of `clients` by default) and add their comparison as `"processes"`. Those processes build
    the default local embedder themselves, so `embedder_factory` must then be None."""
    if processes and embedder_factory is not None:
        raise ValueError("processes=True measures `ragd serve`, which uses the default embedder")

    work = Path(tempfile.mkdtemp(prefix="ragd-bench-query-"))
    (work / "empty").mkdir()
    settings = Settings(data_dir=work / "data", source=str(work / "empty"), api_tokens=TOKEN)
    rt = Runtime(settings, Providers(settings, embedder_factory=embedder_factory))
    texts = phrases(random.Random(2), queries, 4)
    try:
        await rt.start()
        await rt.instances.ensure_default()
        _, cfg = await rt.instances.get(DEFAULT_INSTANCE)
        embedder = await rt.providers.embedder(cfg)
        index = await rt.providers.index(DEFAULT_INSTANCE, cfg)
        build_s = await fill_index(index, chunks, embedder.dimensions, progress=progress)
        opts = retrieval_options(cfg)
        parts: list[tuple[float, float, float]] = []
        paired: list[float] = []
        levels = []
        async with (
            loopback(app_factory(settings, rt)) as url,
            httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=120,
                limits=httpx.Limits(max_connections=max(clients)),
            ) as client,
        ):
            for q in texts[:3]:  # warm up
                await components(embedder, index, q, opts)
                await search(client, q)
            for i, q in enumerate(texts):
                parts.append(await components(embedder, index, q, opts))
                paired.append(await search(client, q))
                if progress:
                    progress("1 client, paired with its parts", i + 1, len(texts))
            for n in clients:
                if progress:
                    progress(f"{n} concurrent clients", 0, None)
                times, wall = await concurrent(client, texts, n)
                levels.append(
                    {
                        "clients": n,
                        "requests": len(times),
                        "requests_per_s": round(len(times) / wall, 2),
                        "latency_ms": percentiles_ms(times),
                    }
                )
        await rt.close()  # before the processes open its files (closing twice is harmless)
        if processes:
            n = process_clients or max(clients)

            async def measure(client: httpx.AsyncClient) -> tuple[list[float], float]:
                return await concurrent(client, texts, n)

            async def warm(client: httpx.AsyncClient) -> None:
                for q in texts[:5]:
                    await search(client, q)

            env = serve_env(settings.data_dir, settings.source, TOKEN)
            process_section = await compare(
                env, work, TOKEN, n, measure, warm, process_rounds, progress
            )
    finally:
        await rt.close()
        shutil.rmtree(work, ignore_errors=True)
    embed, vector, keyword = (list(col) for col in zip(*parts, strict=True))
    below = [e + v + k for e, v, k in parts]
    result: dict[str, Any] = {
        "chunks": chunks,
        "dimensions": embedder.dimensions,
        "embedder": embedder.model_id,
        "route": "POST /search (AutoRAG's, default instance)",
        "retrieval": {
            "type": opts.retrieval_type,
            "fusion": opts.fusion_method,
            "candidates_per_list": opts.candidates,
            "max_num_results": opts.max_num_results,
        },
        "queries": len(texts),
        "index_build_s": round(build_s, 1),
        "components_ms": {
            "embed_query": percentiles_ms(embed),
            "vector_query": percentiles_ms(vector),
            "keyword_query": percentiles_ms(keyword),
            "embed_plus_index": percentiles_ms(below),
        },
        "search_1_client_ms": percentiles_ms(paired),
        "overhead_ms": percentiles_ms([s - b for s, b in zip(paired, below, strict=True)]),
        "concurrency": levels,
        "machine": describe_machine(),
    }
    if processes:
        result["processes"] = process_section
    return result


def summary(result: dict[str, Any]) -> str:
    parts, over = result["components_ms"], result["overhead_ms"]
    lines = [
        f"/search on {result['chunks']:,} chunks ({result['retrieval']['type']}), "
        f"{result['queries']} queries, load average {result['machine']['loadavg']:.1f}",
        f"  embed p50 {parts['embed_query']['p50']} ms, vector query p50 "
        f"{parts['vector_query']['p50']} ms, keyword query p50 {parts['keyword_query']['p50']} ms",
        f"  1 client: /search p50 {result['search_1_client_ms']['p50']} ms, overhead beyond "
        f"embed + index p50 {over['p50']} ms (target <= 5), p95 {over['p95']} ms",
    ]
    for level in result["concurrency"]:
        ms = spread(level["latency_ms"])
        lines.append(f"  {level['clients']:>2} clients: {ms}, {level['requests_per_s']} requests/s")
    if "processes" in result:
        lines.extend(summary_lines(result["processes"]))
    return "\n".join(lines)
