"""Fault 2: the metadata database (PostgreSQL) is restarted in the middle of a sync: an
immediate stop (as a crash or a failover) while the sync writes its first window, started again
two seconds later (while the next window would be written).

The cluster is the test's own (tests/faults/support.py: its own data dir, port and socket, run
as the `postgres` OS user), never the machine's. The sync runs as `ragd sync --inline` runs it
(`Runtime.sync`, in this process, the hashing fake as embedder). The restart is observed once
(a module fixture); each test asserts one thing of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from rag_service.config import Settings
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.faults.support import (
    ItemRow,
    PostgresCluster,
    SlowEmbedder,
    clean_local_run,
    index_chunks,
    items_table,
    jobs_of,
    local_index_file,
    require,
    write_corpus,
)

CONFIG = {"chunk_size": 64}
PG_DOWN_S = 2.0  # the next window is embedded in 1 s: its writes find no database


@dataclass
class Observed:
    outcome: str = ""  # what the sync hit by the restart returned or raised
    hit_job: tuple[str, str | None] = ("", None)  # its row (status, end_reason) once it ended
    next_status: str = ""  # the next sync's result
    next_reason: str = ""
    jobs: list[tuple[str, str | None]] = field(default_factory=list)  # every job, at the end
    chunks: dict[str, str] = field(default_factory=dict)
    items: list[ItemRow] = field(default_factory=list)
    reference: tuple[dict[str, str], list[ItemRow]] = ({}, [])
    seconds: float = 0.0


@pytest.fixture(scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Observed]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("pg-restart")
    pg = PostgresCluster()
    seen = Observed()
    folder = write_corpus(tmp / "src", docs=96, paragraphs=2)
    try:
        pg.init()
        pg.start()
        settings = Settings(
            data_dir=tmp / "data",
            database_url=pg.url,
            ingest_window_chunks=100,  # a window per group of 32 documents
            source_roots=[tmp],
        )
        embedder = SlowEmbedder(1.0)
        providers = Providers(settings, embedder_factory=lambda model, pooling: embedder)
        async with Runtime(settings, providers) as rt:
            await rt.instances.ensure("docs", str(folder), CONFIG)
            sync = asyncio.create_task(rt.sync("docs"))
            await embedder.wait_calls(1)  # the first window is embedded: its writes begin
            await asyncio.to_thread(pg.stop, "immediate")
            await asyncio.sleep(PG_DOWN_S)
            await asyncio.to_thread(pg.start)
            try:
                result = await asyncio.wait_for(sync, timeout=60)
                seen.outcome = f"{result.status}: {result.end_reason}"
            except TimeoutError:
                pytest.fail("the sync hit by the restart did not end within 60 s", pytrace=False)
            except Exception as exc:  # what `ragd sync --inline` would show
                seen.outcome = f"raised {type(exc).__name__}: {exc}"
            [hit] = await jobs_of(rt.sessions, "docs")
            seen.hit_job = (hit.status, hit.end_reason)
            again = await asyncio.wait_for(rt.sync("docs"), timeout=60)
            seen.next_status, seen.next_reason = again.status, again.end_reason
            seen.jobs = [(j.status, j.end_reason) for j in await jobs_of(rt.sessions, "docs")]
            seen.items = await items_table(rt.sessions, "docs")
        seen.chunks = index_chunks(local_index_file(settings.data_dir, "docs"))
    finally:
        await asyncio.to_thread(pg.cleanup)
    seen.reference = await clean_local_run(tmp / "clean", "docs", folder, CONFIG)
    seen.seconds = time.monotonic() - started
    require(seen.outcome, "the sync was not observed")
    yield seen


def test_postgres_restarted_mid_sync_then_the_next_sync_matches_a_clean_run(
    observed: Observed,
) -> None:
    assert observed.next_status == "completed", observed.next_reason
    # Every job has ended with a reason: the one the restart hit at the latest when the next
    # sync found it still `running` (its process is gone: "interrupted").
    assert len(observed.jobs) == 2
    assert all(s in ("completed", "failed") and r for s, r in observed.jobs), observed.jobs
    chunks, items = observed.reference
    assert observed.chunks == chunks  # same ids and texts: none duplicated, missing or stale
    assert observed.items == items
    assert observed.seconds < 90


def test_the_job_hit_by_the_restart_ends_with_a_reason(observed: Observed) -> None:
    status, reason = observed.hit_job
    assert status in ("completed", "failed") and reason, (
        f"the job was left {status!r} (reason {reason!r}); the sync {observed.outcome}"
    )
