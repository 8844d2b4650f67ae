"""`ragd`: run the service, sync, search and ask from the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from rag_service import records
from rag_service.benchmarks import BenchKind
from rag_service.config import Settings
from rag_service.errors import InvalidRequest, RagError
from rag_service.instance_registry import DEFAULT_INSTANCE
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.retrieve.search import KeywordMatchMode
from rag_service.runtime import Runtime

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the index and database live.")
]
InstanceOpt = Annotated[str, typer.Option("--instance", "-i", help="Instance id.")]


# The composition root's one provider hook: tests put model fakes here.
make_providers: Callable[[Settings], Providers] = Providers


def _runtime(settings: Settings) -> Runtime:
    return Runtime(settings, make_providers(settings))


def _private_files() -> None:
    """Files this process writes (database, indexes, caches, uploads) are its user's alone."""
    os.umask(0o077)


def _settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    _private_files()
    try:
        return Settings(**values)
    except ValidationError as exc:
        err.print(f"[red]error:[/red] {'; '.join(e['msg'] for e in exc.errors())}")
        raise typer.Exit(2) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command; our errors become one red line and exit code 1."""
    try:
        return asyncio.run(coro)
    except RagError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


def _quiet_models() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF conversion draws a bar per tensor
    for name in ("transformers", "sentence_transformers", "httpx", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    )


async def _instance(rt: Runtime, instance_id: str, synced: bool = False) -> None:
    """NotFound for an unknown instance; `default` is created on first use. `synced`: refuse
    an instance that was never synced (its index is empty, and an empty answer would mislead)."""
    if instance_id == DEFAULT_INSTANCE:
        await rt.instances.ensure_default()
    await rt.instances.get(instance_id)
    if synced and not await records.has_synced(rt.sessions, instance_id):
        raise InvalidRequest(
            f"instance {instance_id!r} was never synced: run `ragd sync {instance_id}`"
        )


@app.command()
def up(
    source: Annotated[
        str | None, typer.Option(help="Folder to index (default: the samples).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    data_dir: DataDir = None,
) -> None:
    """Everything in one process: API, syncs at start and on each instance's interval."""
    from workers.embedded import run_embedded

    _serve(_settings(data_dir, source=source), host, port, scheduler=run_embedded, source=source)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    data_dir: DataDir = None,
) -> None:
    """The HTTP API alone (syncs run elsewhere: `ragd sync` or the worker)."""
    settings = _settings(data_dir)
    _note_host_bound(settings)
    _serve(settings, host, port, scheduler=None, source=None)


def _note_host_bound(settings: Settings) -> None:
    """On a shared database, say what still stays on this host (README: several hosts)."""
    kept = settings.host_bound_state()
    if kept and settings.resolved_database_url.startswith("postgresql"):
        err.print("[yellow]note:[/yellow] this host's data dir keeps " + "; ".join(kept))


def _serve(settings: Settings, host: str, port: int, scheduler: Any, source: str | None) -> None:
    import uvicorn

    from rag_service.api.app import create_app
    from rag_service.api.auth import ensure_local_token
    from rag_service.api.server import server_config

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _quiet_models()
    runtime = _runtime(settings)

    async def prepare() -> None:
        async with _runtime(settings) as rt:
            row = await rt.instances.ensure_default(source)
            err.print(f"instance [bold]default[/bold] indexes {row.source}")

    _run(prepare())
    if not settings.api_tokens:
        from pydantic import SecretStr

        token, created = ensure_local_token(settings)
        settings.api_tokens = [SecretStr(token)]
        where = settings.data_dir / "api-token"
        if created:
            err.print(f"API token (stored in {where}): [bold]{token}[/bold]")
        else:
            err.print(f"API token: see {where}")
    err.print(f"serving on http://{host}:{port}  (playground: GET /, API schema: GET /schema)")
    app = create_app(
        settings, runtime, background=scheduler, job_runner="inline" if scheduler else "queue"
    )
    uvicorn.Server(server_config(app, host, port, log_level="warning")).run()


@app.command()
def sync(
    instance: Annotated[str, typer.Argument(help="Instance id.")] = DEFAULT_INSTANCE,
    inline: Annotated[
        bool, typer.Option("--inline", help="Run here instead of on a `ragd worker`.")
    ] = False,
    all_instances: Annotated[bool, typer.Option("--all", help="Sync every instance.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Sync an instance with its source now; exits 0 only when every job completed."""
    settings = _settings(data_dir)
    _quiet_models()

    async def one(rt: Runtime, instance_id: str) -> int:
        with _progress_bar() as bar:
            task = bar.add_task(f"syncing {instance_id}", total=None)
            if inline:
                result = await _sync_inline(rt, instance_id, lambda: bar.advance(task))
            else:
                from rag_service.queue import sync_and_follow

                def progress(done: int, planned: int | None) -> None:
                    bar.update(task, completed=done, total=planned)

                result = await sync_and_follow(rt.settings, rt.sessions, instance_id, progress)
                for status, key, reason in await records.item_problems(
                    rt.sessions, result["job_id"]
                ):
                    err.print(f"  [yellow]{status}[/yellow] {key}: {reason}")
        return _report(instance_id, result)

    async def go() -> int:
        async with _runtime(settings) as rt:
            await _instance(rt, DEFAULT_INSTANCE if all_instances else instance)
            if not all_instances:
                return await one(rt, instance)
            async with rt.sessions() as session:
                ids = [row.id for row in await records.list_instances(session)]
            return max([await one(rt, instance_id) for instance_id in ids], default=0)

    raise typer.Exit(_run(go()))


async def _sync_inline(rt: Runtime, instance: str, tick: Any) -> dict[str, Any]:
    def progress(status: str, obj: Any, detail: str) -> None:
        tick()
        if status in ("error", "skipped"):
            err.print(f"  [yellow]{status}[/yellow] {obj.key}: {detail}")

    result = await rt.sync(instance, progress=progress)
    return {
        "job_id": result.job_id,
        "status": result.status,
        "end_reason": result.end_reason,
        "counts": result.counts,
        "seconds": result.seconds,
    }


def _report(instance_id: str, result: dict[str, Any]) -> int:
    """One summary line; the exit status is 0 only for a completed job."""
    c = Counter(result["counts"])
    if result["status"] == "skipped":
        err.print(f"[yellow]{result['end_reason']}[/yellow]")
        return 1
    err.print(
        f"{instance_id}: job {result['job_id']} {result['status']} in "
        f"{result.get('seconds', 0):.1f}s: "
        f"{c['listed']} listed, {c['completed']} indexed ({c['chunks']} chunks), "
        f"{c['error']} errors, {c['skipped']} skipped, {c['unchanged']} unchanged, "
        f"{c['deleted']} deleted"
    )
    if result["status"] != "completed":
        err.print(f"[red]{result['end_reason']}[/red]")
    return 0 if result["status"] == "completed" else 1


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    data_dir: DataDir = None,
) -> None:
    """The ingestion worker (arq on Redis): queued syncs and each instance's schedule."""
    from workers.worker import build_worker

    settings = _settings(data_dir)
    _note_host_bound(settings)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _quiet_models()

    async def go() -> None:
        w = build_worker(settings, burst=burst)
        try:
            await w.main()
        finally:
            await w.close()

    _run(go())


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    instance: InstanceOpt = DEFAULT_INSTANCE,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the AI Search result object.")
    ] = False,
    max_results: Annotated[int | None, typer.Option("--max-results", min=1, max=50)] = None,
    data_dir: DataDir = None,
) -> None:
    """Retrieval only: the best chunks for QUERY."""
    from rag_service.api.shapes import aisearch_search_result

    settings = _settings(data_dir)
    _quiet_models()

    async def go() -> dict[str, Any]:
        async with _runtime(settings) as rt:
            await _instance(rt, instance, synced=True)
            options = QueryOptions(max_num_results=max_results)
            found = await rt.pipeline.search(instance, query, options)
            return aisearch_search_result(found.search_query, found.chunks)

    result = _run(go())
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        return
    table = Table("score", "file", "text")
    for chunk in result["chunks"]:
        table.add_row(
            f"{chunk['score']:.3f}", chunk["item"]["key"], chunk["text"][:120].replace("\n", " ")
        )
    Console().print(table)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    instance: InstanceOpt = DEFAULT_INSTANCE,
    data_dir: DataDir = None,
) -> None:
    """Retrieve, then stream a grounded answer and list its sources (the instance's settings
    apply as on POST /ai-search: rewrite, reranking, cache...)."""
    settings = _settings(data_dir)
    _quiet_models()

    async def go() -> None:
        async with _runtime(settings) as rt:
            await _instance(rt, instance, synced=True)
            reply = await rt.pipeline.answer(instance, question, route="autorag")
            async with contextlib.aclosing(reply.pieces) as pieces:
                async for piece in pieces:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            sys.stdout.write("\n\nSources:\n")
            for c in reply.used:
                sys.stdout.write(f"  {c.score:.3f}  {c.key}\n")

    _run(go())


@app.command("eval")
def eval_cmd(
    beir: Annotated[
        Path,
        typer.Option("--beir", exists=True, file_okay=False, help="A BEIR-format folder."),
    ],
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write per-mode metrics to this file.")
    ] = None,
    match_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Vector similarity floor.")
    ] = 0.0,
    keyword_match_mode: Annotated[
        KeywordMatchMode | None,
        typer.Option(help="Keyword terms: all (and) or any (or); default: the instance's."),
    ] = None,
    answers: Annotated[
        Path | None,
        typer.Option("--answers", dir_okay=False, help="A QA file: score answers instead."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="--answers: the answer model (default: the settings').")
    ] = None,
    keep: Annotated[
        Path | None,
        typer.Option(help="Index into this folder and keep it (the next run re-syncs it)."),
    ] = None,
) -> None:
    """Retrieval quality on a BEIR folder: its corpus is indexed into a fresh temporary
    instance, its judged queries run in every retrieval mode (nDCG@10, Recall@10/100, MRR@10).
    With --answers QA.jsonl: every question asked through the answer path (facts right,
    "not found" when unanswerable, loops, citation precision, first-token and answer time)."""
    from rag_service.evaluation.answers import run_answer_eval
    from rag_service.evaluation.report import answers_table, result_table
    from rag_service.evaluation.run import run_eval

    _quiet_models()
    with _progress_bar() as bar:
        task = bar.add_task("indexing", total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        if answers is not None:
            scored = _run(
                run_answer_eval(_settings(), beir, answers, model=model, work_dir=keep,
                                progress=progress, make_providers=make_providers)
            )  # fmt: skip
        else:
            result = _run(
                run_eval(_settings(), beir, match_threshold=match_threshold, progress=progress,
                         keyword_match_mode=keyword_match_mode, make_providers=make_providers)
            )  # fmt: skip
    report = scored.to_json() if answers is not None else result.to_json()
    if json_file is not None:
        json_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    Console().print(answers_table(scored) if answers is not None else result_table(result))


@app.command()
def bench(
    kind: Annotated[BenchKind, typer.Argument(help="ingest, query or index.")],
    chunks: Annotated[int, typer.Option(min=1, help="query: chunks in the index.")] = 100_000,
    queries: Annotated[int, typer.Option(min=1, help="query, index: queries per measure.")] = 200,
    clients: Annotated[
        list[int] | None, typer.Option("--clients", min=1, help="query: concurrent clients.")
    ] = None,
    sizes: Annotated[
        list[int] | None, typer.Option("--size", min=1, help="index: vectors.")
    ] = None,
    docs: Annotated[int, typer.Option(min=1, help="ingest: documents.")] = 200,
    repeat: Annotated[int, typer.Option(min=1, help="ingest: alternating runs.")] = 3,
    processes: Annotated[
        bool,
        typer.Option(
            help="query: also compare two `ragd serve` processes (round robin) with one, "
            "at the largest --clients."
        ),
    ] = True,
    rounds: Annotated[
        int, typer.Option(min=2, help="query --processes: interleaved rounds of each.")
    ] = 3,
    out: Annotated[Path | None, typer.Option(help="Folder for KIND.json.")] = None,
) -> None:
    """Throughput and latency on this machine: ingest (sync chunks/s vs the bare embedder),
    query (/search p50/p95/p99 by concurrent clients, overhead beyond embed + index, one vs
    two `ragd serve` processes) or index (vector top-10 latency by size). Writes
    bench/results/KIND.json with the machine."""
    from rag_service.api.app import create_app as api_app
    from rag_service.benchmarks import index as index_bench
    from rag_service.benchmarks import ingest as ingest_bench
    from rag_service.benchmarks import query as query_bench
    from rag_service.benchmarks.machine import RESULTS, save_result

    _quiet_models()
    modules = {"ingest": ingest_bench, "query": query_bench, "index": index_bench}
    with _progress_bar() as bar:
        task = bar.add_task(kind, total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        if kind == "ingest":
            result = _run(ingest_bench.run(docs, repeat))
        elif kind == "query":
            runs = clients or query_bench.CLIENTS
            result = _run(
                query_bench.run(
                    api_app,
                    chunks,
                    queries,
                    runs,
                    progress=progress,
                    processes=processes,
                    process_rounds=rounds,
                )
            )
        else:
            result = _run(index_bench.run(sizes or index_bench.SIZES, queries, progress=progress))
    path = save_result(kind, result, out or RESULTS)
    Console().print(modules[kind].summary(result))
    err.print(f"written to {path}")


@app.command("instances")
def list_instances_cmd(data_dir: DataDir = None) -> None:
    """List instances and their sources."""
    from rag_service.records import list_instances

    async def go() -> list[tuple[str, str]]:
        async with _runtime(_settings(data_dir)) as rt:
            await rt.instances.ensure_default()
            async with rt.sessions() as session:
                return [(r.id, r.source) for r in await list_instances(session)]

    table = Table("instance", "source")
    for row in _run(go()):
        table.add_row(*row)
    Console().print(table)


@app.command("jobs")
def list_jobs_cmd(
    instance: Annotated[str, typer.Argument(help="Instance id.")] = DEFAULT_INSTANCE,
    limit: Annotated[int, typer.Option(help="How many of the latest jobs.")] = 10,
    data_dir: DataDir = None,
) -> None:
    """The instance's latest sync jobs: status, timings, end reason."""

    async def go() -> list[tuple[str, ...]]:
        async with _runtime(_settings(data_dir)) as rt:
            await _instance(rt, instance)
            _, jobs = await records.list_jobs(rt.sessions, instance, 1, max(1, limit))
        stamp = "%Y-%m-%d %H:%M:%S"
        return [
            (j.id[:8], j.source, j.status, j.started_at.strftime(stamp) if j.started_at else "",
             j.ended_at.strftime(stamp) if j.ended_at else "", j.end_reason or "")
            for j in jobs
        ]  # fmt: skip

    table = Table("job", "source", "status", "started (UTC)", "ended (UTC)", "end reason")
    for row in _run(go()):
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    app()
