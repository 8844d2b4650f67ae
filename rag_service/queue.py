"""The worker's queue on Redis, in one place: its name, task names, job ids, JSON serializers,
the per-instance lock, the connection pool, and queueing a sync (at once or followed to its
end). `workers/` imports this; nothing here imports `workers/`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus as ArqStatus
from redis.exceptions import RedisError

from rag_service import records
from rag_service.config import Settings
from rag_service.errors import BackendError, RagError
from rag_service.models import Job

QUEUE = "ragd:queue"
HEALTH_CHECK_SECONDS = 10
SYNC_TASK, INDEX_ITEM_TASK, DELETE_ITEM_TASK = "sync_instance", "index_item", "delete_item"
WORKER_START_WAIT_S = 5.0
QUEUE_LOST_S = 30.0  # a sync the queue no longer knows and that never started
LOST = "the queue lost the sync before it started (was Redis restarted?)"

# A holder that dies (kill -9) blocks the instance for at most this long.
LOCK_TTL_MS = 30_000
RENEW_EVERY_S = 10.0
# Delete or extend the lock only while it still holds our token.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)

JobProgress = Callable[[int, int | None], None]  # (items done, items planned or None)


def serialize(obj: Any) -> bytes:
    """Jobs travel as JSON, never pickle: whoever can write to Redis must not run code here."""
    return json.dumps(obj, default=str).encode()


def deserialize(data: bytes) -> Any:
    return json.loads(data)


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.redis_url)


def health_check_key() -> str:
    return f"{QUEUE}:health-check"


def sync_job_id(job_id: str) -> str:
    return f"ragd:sync:{job_id}"


def schedule_job_id(instance_id: str, slot: int) -> str:
    """One scheduled sync per instance and interval slot, however many workers ask."""
    return f"ragd:schedule:{instance_id}:{slot}"


def item_job_id() -> str:
    return f"ragd:item:{uuid.uuid4()}"


def lock_key(instance_id: str) -> str:
    return f"ragd:sync-lock:{instance_id}"


def cooldown_key(instance_id: str) -> str:
    """Set (with the cooldown as its TTL) by the API process that queued the latest sync."""
    return f"ragd:sync-cooldown:{instance_id}"


@contextlib.asynccontextmanager
async def instance_lock(redis: Any, instance_id: str, wait: float = 0.0) -> AsyncIterator[bool]:
    """The instance's lock, renewed while held, so that two syncs (or item changes) of one
    instance never overlap even across workers. Yields True when taken within `wait` seconds
    (and holds it until exit), False when another holder kept it."""
    key, token = lock_key(instance_id), secrets.token_hex(16)
    deadline = asyncio.get_running_loop().time() + wait
    while not await redis.set(key, token, nx=True, px=LOCK_TTL_MS):
        if asyncio.get_running_loop().time() >= deadline:
            yield False
            return
        await asyncio.sleep(0.5)

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            with contextlib.suppress(RedisError, OSError):  # Redis away: try at the next turn
                await redis.eval(_RENEW, 1, key, token, LOCK_TTL_MS)

    renewer = asyncio.create_task(renew())
    try:
        yield True
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(RedisError, OSError):  # the lock's TTL frees it then
            await redis.eval(_RELEASE, 1, key, token)


@contextlib.asynccontextmanager
async def queue_pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    """A connection to the worker's queue (JSON jobs), closed on exit; BackendError when Redis
    cannot be reached."""
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


async def worker_alive(pool: ArqRedis, wait: float = 0.0) -> bool:
    """True once a worker's heartbeat is seen within `wait` seconds (one may be starting)."""
    deadline = time.monotonic() + wait
    while not await pool.exists(health_check_key()):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def enqueue_sync(
    pool: ArqRedis,
    instance_id: str,
    description: str | None = None,
    source: str = "user",
    sessions: records.Sessions | None = None,
) -> tuple[str, ArqJob]:
    """Queue a sync for the worker without waiting for it: its job id and arq job. With
    `sessions`, its job row is written first (`queued`: readable and cancellable at once)."""
    job_id = str(uuid.uuid4())
    if sessions is not None:
        await records.queue_job(sessions, instance_id, job_id, source, description)
    try:
        queued = await pool.enqueue_job(
            SYNC_TASK, instance_id, source, job_id, description, _job_id=sync_job_id(job_id)
        )
    except BaseException:
        if sessions is not None:
            await records.end_queued_job(sessions, job_id, "failed", "the queue refused it")
        raise
    assert queued is not None  # a fresh uuid cannot collide
    return job_id, queued


async def queued_sync(pool: ArqRedis, job_id: str) -> bool:
    """Whether the queue holds the sync, not started or running (no row yet)."""
    job = ArqJob(sync_job_id(job_id), pool, _queue_name=QUEUE, _deserializer=deserialize)
    return await job.status() in (ArqStatus.queued, ArqStatus.deferred, ArqStatus.in_progress)


async def sync_and_follow(
    settings: Settings, sessions: records.Sessions, instance_id: str, progress: JobProgress
) -> dict[str, Any]:
    """What `ragd sync` does by default: queue a sync and wait for its result, reporting item
    progress from the database; a worker that stops meanwhile is an error."""
    async with queue_pool(settings) as pool:
        if not await worker_alive(pool, WORKER_START_WAIT_S):
            raise RagError("no worker is running: start `ragd worker`, or sync here with --inline")
        job_id, queued = await enqueue_sync(pool, instance_id, sessions=sessions)
        heard = lost = time.monotonic()
        while True:
            try:
                status = await queued.status()
                if status == ArqStatus.complete:
                    return await task_result(queued)
                alive: bool | None = bool(await pool.exists(health_check_key()))
            except (RedisError, OSError):  # Redis away: the database still says how it went
                status, alive = None, None
            job = await records.get_job(sessions, instance_id, job_id)
            if job is not None and job.ended_at is not None and status != ArqStatus.in_progress:
                return job_summary(job)
            if status != ArqStatus.not_found or (job is not None and job.status != "queued"):
                lost = time.monotonic()
            elif time.monotonic() - lost > QUEUE_LOST_S:
                await records.end_queued_job(sessions, job_id, "failed", LOST)
                raise BackendError(f"{LOST}: run `ragd sync` again")
            progress(*await records.job_progress(sessions, job_id, job))
            if alive:
                heard = time.monotonic()
            elif alive is False and time.monotonic() - heard > 2 * HEALTH_CHECK_SECONDS:
                raise BackendError(
                    "the worker stopped during the sync: start `ragd worker` again and rerun "
                    "`ragd sync` (it carries on from the items already indexed)"
                )
            await asyncio.sleep(0.5)


def job_summary(job: Job) -> dict[str, Any]:
    """A finished job as the worker's task reports it."""
    seconds = (
        (job.ended_at - job.started_at).total_seconds() if job.started_at and job.ended_at else 0
    )
    return {
        "job_id": job.id,
        "status": job.status,
        "end_reason": job.end_reason or "",
        "counts": {k: v for k, v in job.counts.items() if k != "usage"},
        "seconds": round(seconds, 3),
    }


async def task_result(queued: ArqJob) -> dict[str, Any]:
    info = await queued.result_info()
    if info is None or not info.success:
        raise BackendError(f"the worker failed the task: {info.result if info else 'no result'}")
    result: dict[str, Any] = info.result
    return result
