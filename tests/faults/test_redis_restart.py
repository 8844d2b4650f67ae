"""Fault 1: the worker's Redis is killed (SIGKILL) in the middle of a queued sync and started
again on the same port, empty (nothing kept on disk, as the compose file's Redis).

The worker is the real `ragd worker` command in a process of its own, with the hashing fake as
its embedder (tests/faults/fake_model_ragd.py), on a private `redis-server`; the sync is queued
with `enqueue_sync`. The outage is observed once (a module fixture); each test asserts one
thing of it. The outage lasts 2 s and spans a renewal of the instance's lock, as an outage of
more than 10 s does in `ragd` (the worker's renewal period is cut to 0.5 s for it). The last
test follows a sync as `ragd sync` does (`sync_and_follow`), through an outage of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from arq.jobs import Job as ArqJob
from arq.jobs import JobResult

from rag_service import db, queue
from rag_service.config import Settings
from rag_service.errors import RagError
from rag_service.models import Job
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from tests.faults.support import (
    ItemRow,
    RedisServer,
    SlowEmbedder,
    clean_local_run,
    completed_items,
    index_chunks,
    items_table,
    jobs_of,
    local_index_file,
    require,
    wait_job_ended,
    wait_until,
    write_corpus,
)
from workers.worker import build_worker

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"chunk_size": 64}  # a few chunks per document
DOCS = 96  # three windows of 32 documents
EMBED_DELAY_S = "1.5"  # per window: the sync lasts about 5 s, the outage lands in the 2nd
REDIS_DOWN_S = 2.0


@dataclass
class Observed:
    """What the outage did to the queued sync it hit, then what the next sync left."""

    hit: Job | None = None  # the job row of the sync hit by the outage, once it ended
    hit_result: JobResult | None = None  # what the queue says of it (what `ragd sync` shows)
    worker_exit: int | None = None  # the worker's exit status 1 s after Redis came back
    worker_log: str = ""
    next_result: JobResult | None = None
    jobs: list[tuple[str, str | None]] = field(default_factory=list)  # (status, end_reason)
    chunks: dict[str, str] = field(default_factory=dict)
    items: list[ItemRow] = field(default_factory=list)
    reference: tuple[dict[str, str], list[ItemRow]] = ({}, [])
    seconds: float = 0.0


class Worker:
    """`ragd worker` with the fake embedder, in a process of its own."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        env = {
            **os.environ,
            "RAGD_REDIS_URL": settings.redis_url,
            "FAULTS_EMBED_DELAY": EMBED_DELAY_S,
            "FAULTS_LOCK_RENEW_S": "0.5",
            "RAGD_INGEST_WINDOW_CHUNKS": "100",  # a window per group of 32 documents
        }
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.fake_model_ragd", "worker",
                 "--data-dir", str(settings.data_dir)],
                cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    async def started(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            require(self.proc.poll() is None, self.log.read_text()[-3000:])
            with contextlib.suppress(Exception):
                async with queue.queue_pool(self.settings) as pool:
                    if await queue.worker_alive(pool):
                        return
            require(time.monotonic() < deadline, "the worker did not start")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        """SIGKILL the process and whatever it started (its extraction workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


async def queued_sync(settings: Settings) -> str:
    async with queue.queue_pool(settings) as pool:
        job_id, _ = await queue.enqueue_sync(pool, "docs")
    return job_id


async def result_of(settings: Settings, job_id: str, timeout: float) -> JobResult | None:  # noqa: ASYNC109
    """What the queue says of a sync once it has ended, None if it says nothing in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # Redis may be restarting
            async with queue.queue_pool(settings) as pool:
                job = ArqJob(queue.sync_job_id(job_id), pool, _queue_name=queue.QUEUE,
                             _deserializer=queue.deserialize)  # fmt: skip
                if (info := await job.result_info()) is not None:
                    return info
        await asyncio.sleep(0.2)
    return None


@pytest.fixture(scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Observed]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("redis-restart")
    redis = RedisServer(tmp)
    redis.start()
    folder = tmp / "src"
    folder.mkdir()
    settings = Settings(data_dir=tmp / "data", redis_url=redis.url, source_roots=[tmp])
    # A first sync (of the folder while empty) so that the worker's schedule finds the
    # instance synced just now: the sync that the outage hits is the one queued below.
    embedder = HashingEmbedder()
    providers = Providers(settings, embedder_factory=lambda model, pooling: embedder)
    async with Runtime(settings, providers) as rt:
        await rt.instances.ensure("docs", str(folder), CONFIG)
        require((await rt.sync("docs")).status == "completed", "the first sync failed")
    write_corpus(folder, docs=DOCS, paragraphs=2)
    engine = db.create_engine(settings.resolved_database_url)
    sessions = db.session_factory(engine)
    seen = Observed()
    workers = [Worker(settings, tmp / "worker.log")]
    try:
        await workers[0].started()
        job_id = await queued_sync(settings)
        ragd_db = settings.data_dir / "ragd.db"
        # The first window is written, the second embeds.
        await asyncio.to_thread(
            wait_until, lambda: completed_items(ragd_db, "docs") >= 32, 60, "the first window"
        )
        require(workers[0].proc.poll() is None, "the worker stopped before the outage")
        redis.kill()
        await asyncio.sleep(REDIS_DOWN_S)
        redis.start()
        seen.hit = await wait_job_ended(sessions, job_id, timeout=60)
        seen.hit_result = await result_of(settings, job_id, timeout=15)
        await asyncio.sleep(1.0)  # a worker that keeps running has polled Redis again by now
        seen.worker_exit = workers[0].proc.poll()
        seen.worker_log = (tmp / "worker.log").read_text(errors="replace")
        if seen.worker_exit is not None:  # started again, as an operator or supervisor would
            workers.append(Worker(settings, tmp / "worker2.log"))
            await workers[-1].started()
        # The next sync.
        seen.next_result = await result_of(settings, await queued_sync(settings), timeout=60)
        seen.jobs = [(j.status, j.end_reason) for j in await jobs_of(sessions, "docs")]
        seen.items = await items_table(sessions, "docs")
    finally:
        for worker in workers:
            worker.stop()
        await engine.dispose()
        redis.kill()
    seen.chunks = index_chunks(local_index_file(settings.data_dir, "docs"))
    seen.reference = await clean_local_run(tmp / "clean", "docs", folder, CONFIG)
    seen.seconds = time.monotonic() - started
    yield seen


def test_redis_restarted_mid_sync_then_the_next_sync_matches_a_clean_run(
    observed: Observed,
) -> None:
    # The job the outage hit ended, and says how (the sync itself never needs Redis).
    hit = observed.hit
    assert hit is not None, "the queued sync never started"
    assert hit.status in ("completed", "failed") and hit.end_reason, (hit.status, hit.end_reason)
    # The next sync completed, and no job is left running.
    assert observed.next_result is not None and observed.next_result.success, observed.next_result
    assert observed.next_result.result["status"] == "completed"
    assert all(status in ("completed", "failed") for status, _ in observed.jobs), observed.jobs
    chunks, items = observed.reference
    assert observed.chunks == chunks  # same ids and texts: none duplicated, missing or stale
    assert observed.items == items
    assert observed.seconds < 90


def test_the_worker_keeps_running_across_a_redis_restart(observed: Observed) -> None:
    errors = [line for line in observed.worker_log.splitlines() if "Error" in line]
    assert observed.worker_exit is None, (
        f"`ragd worker` exited with status {observed.worker_exit}: {errors[-1:]}"
    )


def test_the_queue_reports_what_the_job_row_says(observed: Observed) -> None:
    hit, result = observed.hit, observed.hit_result
    assert hit is not None and hit.status == "completed", hit
    assert result is not None, "the queue lost the sync's result"
    assert result.success, f"the queue reports a failure: {result.result}"
    assert result.result["status"] == hit.status


async def test_ragd_sync_following_a_sync_says_what_a_redis_restart_did(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    folder = write_corpus(tmp_path / "src", docs=DOCS, paragraphs=2)
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=redis.url, ingest_window_chunks=100,
        source_roots=[tmp_path],
    )  # fmt: skip
    embedder = SlowEmbedder(float(EMBED_DELAY_S))
    providers = Providers(settings, embedder_factory=lambda model, pooling: embedder)
    rt = Runtime(settings, providers)
    await rt.start()
    await rt.instances.ensure("docs", str(folder), CONFIG)
    worker = build_worker(settings, runtime=rt, handle_signals=False, poll_delay=0.05)
    worker.cron_jobs = []
    running = asyncio.create_task(worker.main())
    follow = asyncio.create_task(
        queue.sync_and_follow(settings, rt.sessions, "docs", lambda done, planned: None)
    )
    try:
        await embedder.wait_calls(1)
        redis.kill()
        await asyncio.sleep(REDIS_DOWN_S)
        redis.start()
        try:
            result = await asyncio.wait_for(follow, timeout=60)
        except TimeoutError:
            pytest.fail("`ragd sync` did not end within 60 s", pytrace=False)
        except RagError as exc:  # a clear error of ragd's own is fine
            result = {"status": "error", "end_reason": exc.message}
        except Exception as exc:
            raise AssertionError(
                f"`ragd sync` fails with {type(exc).__module__}.{type(exc).__name__}: {exc}"
            ) from exc
        assert result["end_reason"]
    finally:
        for task in (follow, running):
            task.cancel()
        await asyncio.gather(follow, running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await worker.close()
        with contextlib.suppress(Exception):
            await rt.close()
        redis.kill()
