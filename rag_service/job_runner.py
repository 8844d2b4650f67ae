"""Where the API's syncs and item changes run: in this process (`ragd up`) or on the arq worker
(`ragd serve`). Either way they take the instance's lock, so that an upload, an item sync or a
delete never overlaps a sync of the same instance: it waits for the sync to end.

A sync asked through the API is refused (429 `sync_in_cooldown`) while one runs or is queued
and within `sync_cooldown_s` of the last one's start, as AI Search does; a sync is cancelled
through its job row, which the sync loop reads at each item boundary."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from arq.connections import ArqRedis

from rag_service import queue, records
from rag_service.errors import BackendError, Conflict, NotFound, RagError, SyncInCooldown
from rag_service.models import FINAL_JOB_STATUSES, Job, utcnow
from rag_service.runtime import Runtime

log = logging.getLogger("ragd.jobs")
START_WAIT_SECONDS = 30.0
ITEM_WAIT_SECONDS = 600.0  # an item change asked to wait: for a running sync, then itself
CANCEL_WAIT_SECONDS = 5.0  # a cancel waits this long for the job to end before answering
NO_WORKER = "no worker is running: the job starts with `ragd worker`"


@dataclass
class Started:
    job_id: str
    notes: list[str] = field(default_factory=list)


def too_soon(instance_id: str, cooldown: float, left_s: float) -> SyncInCooldown:
    return SyncInCooldown(
        f"a sync of instance {instance_id!r} started less than {cooldown:g} s ago: ask again "
        f"in {math.ceil(max(left_s, 0.0))} s"
    )


def still_busy(what: str) -> SyncInCooldown:
    return SyncInCooldown(f"{what}: ask again when it has ended")


async def refuse_recent_sync(sessions: records.Sessions, instance_id: str, cooldown: float) -> None:
    """SyncInCooldown when a sync of the instance (the scheduler's and the CLI's too) started
    less than `cooldown` seconds ago or still runs by its row."""
    now = utcnow()
    started = await records.last_sync_start(
        sessions, instance_id, now - timedelta(seconds=cooldown)
    )
    if started is not None:
        raise too_soon(instance_id, cooldown, cooldown - (now - started).total_seconds())


async def cancel_sync(sessions: records.Sessions, instance_id: str, job_id: str) -> Job:
    """Cancel a queued or running job: the row as it is once the job has ended, or after
    CANCEL_WAIT_SECONDS (still running, `end_reason` saying that it will stop). Conflict if
    the job has already ended."""
    job = await records.get_job(sessions, instance_id, job_id)
    if job is not None and job.status in FINAL_JOB_STATUSES:
        raise Conflict(
            f"job {job_id!r} already ended ({job.status}: {job.end_reason or 'no reason'}): "
            "only a queued or running job can be cancelled"
        )
    if job is not None:
        await records.request_cancel(sessions, job_id)
        job = await _until_ended(sessions, instance_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found in instance {instance_id!r}")
    return job


async def _until_ended(sessions: records.Sessions, instance_id: str, job_id: str) -> Job | None:
    """The job's row once it has ended or CANCEL_WAIT_SECONDS have passed (None: gone)."""
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while True:
        job = await records.get_job(sessions, instance_id, job_id)
        if job is None or job.ended_at is not None or time.monotonic() >= deadline:
            return job
        await asyncio.sleep(0.1)


@runtime_checkable
class JobRunner(Protocol):
    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        """Start (or queue) a sync; returns once its job can be read back or is queued.
        SyncInCooldown while one runs or is queued, or within the cooldown of the last."""
        ...

    async def pending(self, job_id: str) -> bool:
        """Whether a sync that has no row yet is still to run."""
        ...

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        """(Re)index one object of the source: now (`wait`) or in the background."""
        ...

    async def delete_item(self, instance_id: str, key: str) -> bool:
        """Drop one item's chunks and row; False when the instance has no such item."""
        ...

    async def is_syncing(self, instance_id: str) -> bool: ...

    async def close(self) -> None: ...


class InlineJobs:
    """Syncs and item changes run as tasks of this process, under its per-instance lock."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tasks: dict[str, asyncio.Task[object]] = {}
        self.asked: dict[str, float] = {}  # instance -> when the API last started a sync of it

    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        """With the cooldown off, a sync already running for the instance raises Conflict."""
        cooldown = self.runtime.settings.sync_cooldown_s
        if cooldown > 0:
            await refuse_recent_sync(self.runtime.sessions, instance_id, cooldown)
            if self.runtime.is_syncing(instance_id):
                raise still_busy(f"a sync of instance {instance_id!r} is running")
            self._claim(instance_id, cooldown)
        job_id = str(uuid.uuid4())
        task = self._spawn(job_id, self.runtime.sync(instance_id, "user", job_id=job_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_SECONDS
        while loop.time() < deadline:
            if task.done():
                self._refused(task, cooldown)  # a refused sync or a failure before it began
                break
            if await records.get_job(self.runtime.sessions, instance_id, job_id) is not None:
                break
            await asyncio.sleep(0.05)
        await records.describe_job(self.runtime.sessions, job_id, description)
        return Started(job_id)

    def _claim(self, instance_id: str, cooldown: float) -> None:
        """Note when this sync was asked, or refuse it within the cooldown of the last one
        (nothing is awaited here: two requests cannot both pass)."""
        now = time.monotonic()
        left = self.asked.get(instance_id, -math.inf) + cooldown - now
        if left > 0:
            raise too_soon(instance_id, cooldown, left)
        self.asked[instance_id] = now

    @staticmethod
    def _refused(task: asyncio.Task[object], cooldown: float) -> None:
        """Raise the error of a sync that ended before its job began: another sync held the
        instance (Conflict; SyncInCooldown with the cooldown on), or a failure."""
        try:
            task.result()
        except Conflict as exc:
            if cooldown > 0:
                raise still_busy(exc.message) from exc
            raise

    async def pending(self, job_id: str) -> bool:
        return job_id in self.tasks

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        work = self.runtime.index_item(instance_id, key)
        if wait:
            await work
        else:
            self._spawn(f"index:{instance_id}:{key}:{uuid.uuid4()}", work)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        return await self.runtime.delete_item(instance_id, key)

    async def is_syncing(self, instance_id: str) -> bool:
        return self.runtime.is_syncing(instance_id)

    def _spawn(self, name: str, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        """Background work of the API, cancelled on shutdown."""
        task: asyncio.Task[object] = asyncio.create_task(work)
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._finished(name, t))
        return task

    def _finished(self, name: str, task: asyncio.Task[object]) -> None:
        self.tasks.pop(name, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            message = exc.message if isinstance(exc, RagError) else repr(exc)
            log.warning("background task %s ended with an error: %s", name, message)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class QueuedJobs:
    """Everything goes to `ragd worker` through the queue; the worker takes the instance's
    Redis lock for syncs and item changes alike."""

    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.sessions = runtime.sessions

    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        """The job's row is written `queued` before the sync goes to the queue."""
        cooldown = self.settings.sync_cooldown_s
        async with queue.queue_pool(self.settings) as pool:
            if cooldown > 0:
                await refuse_recent_sync(self.sessions, instance_id, cooldown)
                await self._refuse_busy(pool, instance_id)
                await self._claim(pool, instance_id, cooldown)
            job_id, _ = await queue.enqueue_sync(
                pool, instance_id, description, sessions=self.sessions
            )
            return Started(job_id, [] if await queue.worker_alive(pool) else [NO_WORKER])

    async def _refuse_busy(self, pool: ArqRedis, instance_id: str) -> None:
        """SyncInCooldown while the instance's lock is held (a sync or an item change runs on
        a worker) or one of its syncs waits in the queue."""
        if await pool.exists(queue.lock_key(instance_id)):
            raise still_busy(f"a sync of instance {instance_id!r} is running")
        for job in await records.open_jobs(self.sessions, instance_id):
            if job.status == "queued" and not await self._lost(pool, job):
                raise still_busy(f"sync job {job.id} of instance {instance_id!r} is queued")

    async def _lost(self, pool: ArqRedis, job: Job) -> bool:
        """Whether a queued job's sync is gone from the queue (its row older than the time to
        queue it); such a job is ended as failed."""
        if await queue.queued_sync(pool, job.id):
            return False
        queued_at = job.last_seen_at
        if queued_at is not None and utcnow() - queued_at < timedelta(seconds=queue.QUEUE_LOST_S):
            return False
        await records.end_queued_job(self.sessions, job.id, "failed", queue.LOST)
        return True

    @staticmethod
    async def _claim(pool: ArqRedis, instance_id: str, cooldown: float) -> None:
        """Note (in Redis, for every API process) that a sync was asked now, or refuse it
        within the cooldown of the last one (SET NX: two requests cannot both pass)."""
        key = queue.cooldown_key(instance_id)
        if not await pool.set(key, "1", nx=True, px=max(1, round(cooldown * 1000))):
            raise too_soon(instance_id, cooldown, await pool.pttl(key) / 1000)

    async def pending(self, job_id: str) -> bool:
        try:
            async with queue.queue_pool(self.settings) as pool:
                return await queue.queued_sync(pool, job_id)
        except BackendError:
            return False

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        await self._item_task(queue.INDEX_ITEM_TASK, instance_id, key, wait)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        result = await self._item_task(queue.DELETE_ITEM_TASK, instance_id, key, wait=True)
        return result.get("status") == "deleted"

    async def is_syncing(self, instance_id: str) -> bool:
        async with queue.queue_pool(self.settings) as pool:
            return bool(await pool.exists(queue.lock_key(instance_id)))

    async def close(self) -> None:
        return None

    async def _item_task(self, task: str, instance_id: str, key: str, wait: bool) -> dict[str, Any]:
        async with queue.queue_pool(self.settings) as pool:
            if wait and not await queue.worker_alive(pool, queue.WORKER_START_WAIT_S):
                raise BackendError(f"{NO_WORKER}: start it and ask again")
            queued = await pool.enqueue_job(task, instance_id, key, _job_id=queue.item_job_id())
            assert queued is not None  # a fresh uuid cannot collide
            if not wait:
                return {}
            try:
                await queued.result(timeout=ITEM_WAIT_SECONDS, poll_delay=0.1)
            except TimeoutError as exc:
                raise BackendError(f"the worker did not finish {key!r} in time") from exc
            except Exception:  # the task's own error: reported by task_result below
                pass
            return await queue.task_result(queued)
