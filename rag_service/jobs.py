"""Sync jobs on demand (the API's `POST .../jobs`) and reading jobs and their logs back.

A job is run either here, as a task of this process (`ragd up`), or by the arq worker (`ragd
serve`): then it is queued exactly as `ragd sync` queues it, and this process does not wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, update

from rag_service.config import Settings
from rag_service.errors import BackendError, RagError
from rag_service.models import Job, JobLog
from rag_service.paging import count_and_page
from rag_service.runtime import Runtime

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = logging.getLogger("ragd.jobs")
JobRunner = Literal["inline", "queue"]
START_WAIT_SECONDS = 30.0


async def list_jobs(
    runtime: Runtime, instance_id: str, page: int, per_page: int
) -> tuple[int, Sequence[Job]]:
    query = (
        select(Job)
        .where(Job.instance_id == instance_id)
        .order_by(Job.started_at.desc().nulls_first(), Job.id)
    )
    async with runtime.sessions() as session:
        return await count_and_page(session, query, page, per_page)


async def get_job(runtime: Runtime, instance_id: str, job_id: str) -> Job | None:
    async with runtime.sessions() as session:
        job = await session.get(Job, job_id)
    return job if job is not None and job.instance_id == instance_id else None


async def job_logs(
    runtime: Runtime, job_id: str, page: int, per_page: int
) -> tuple[int, Sequence[JobLog]]:
    query = select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)
    async with runtime.sessions() as session:
        return await count_and_page(session, query, page, per_page)


async def describe(runtime: Runtime, job_id: str, description: str | None) -> None:
    if description:
        async with runtime.sessions() as session, session.begin():
            await session.execute(
                update(Job).where(Job.id == job_id).values(description=description)
            )


class InlineJobs:
    """Syncs run as tasks of this process; `start` returns once the job row exists."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tasks: dict[str, asyncio.Task[object]] = {}

    async def start(self, instance_id: str, description: str | None) -> str:
        """Start a sync; a sync already running for the instance raises Conflict."""
        job_id = str(uuid.uuid4())
        task: asyncio.Task[object] = asyncio.create_task(
            self.runtime.sync(instance_id, "user", job_id=job_id)
        )
        self.tasks[job_id] = task
        task.add_done_callback(lambda t: self._finished(job_id, t))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_SECONDS
        while loop.time() < deadline:
            if task.done():
                task.result()  # a refused sync (Conflict) or a failure before it began
                break
            if await get_job(self.runtime, instance_id, job_id) is not None:
                break
            await asyncio.sleep(0.05)
        await describe(self.runtime, job_id, description)
        return job_id

    def pending(self, job_id: str) -> bool:
        return job_id in self.tasks

    def spawn(self, name: str, work: Coroutine[Any, Any, object]) -> None:
        """Other background work of the API (one item's indexing), cancelled on shutdown."""
        task: asyncio.Task[object] = asyncio.create_task(work)
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._finished(name, t))

    def _finished(self, job_id: str, task: asyncio.Task[object]) -> None:
        self.tasks.pop(job_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            message = exc.message if isinstance(exc, RagError) else repr(exc)
            log.warning("background task %s ended with an error: %s", job_id, message)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def queue_pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    """A connection to the worker's queue (JSON jobs), closed on exit; BackendError when Redis
    cannot be reached."""
    from arq.connections import create_pool

    from workers.worker import QUEUE, deserialize, redis_settings, serialize

    try:
        pool = await create_pool(
            redis_settings(settings),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=QUEUE,
        )
    except Exception as exc:  # redis-py raises several types for an unreachable server
        raise BackendError(f"cannot reach Redis at the configured RAGD_REDIS_URL: {exc}") from exc
    try:
        yield pool
    finally:
        with contextlib.suppress(Exception):
            await pool.aclose()


def arq_job_id(job_id: str) -> str:
    return f"ragd:sync:{job_id}"


async def enqueue_sync(runtime: Runtime, instance_id: str) -> tuple[str, bool]:
    """Queue a sync for `ragd worker` (as `ragd sync` does) without waiting for it.
    Returns the job id and whether a worker is alive to take it."""
    from workers.worker import health_check_key

    async with queue_pool(runtime.settings) as pool:
        job_id = str(uuid.uuid4())
        await pool.enqueue_job(
            "sync_instance", instance_id, "user", job_id, _job_id=arq_job_id(job_id)
        )
        return job_id, bool(await pool.exists(health_check_key()))


async def queued_in_redis(runtime: Runtime, job_id: str) -> bool:
    """Whether the worker's queue holds the job, not started or running (no row yet)."""
    from arq.jobs import Job as ArqJob
    from arq.jobs import JobStatus

    from workers.worker import QUEUE, deserialize

    try:
        async with queue_pool(runtime.settings) as pool:
            job = ArqJob(arq_job_id(job_id), pool, _queue_name=QUEUE, _deserializer=deserialize)
            status = await job.status()
    except BackendError:
        return False
    return status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress)
