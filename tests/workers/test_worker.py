"""The arq worker against this machine's real Redis: queued syncs, the lock, the schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import create_pool
from redis.asyncio import Redis

from rag_service.config import Settings
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from workers.client import enqueue_sync
from workers.lock import instance_lock, lock_key
from workers.tasks import enqueue_due_syncs, sync_instance
from workers.worker import (
    QUEUE,
    build_worker,
    deserialize,
    health_check_key,
    redis_settings,
    serialize,
)

REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own, emptied per test


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def runtime(settings: Settings, tmp_path: Path, redis: Redis) -> AsyncIterator[Runtime]:
    settings.redis_url = REDIS_URL
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("Alpha centauri is the nearest star system.")
    (src / "b.txt").write_text("Bread needs flour, water and salt.")
    (src / "bad.pdf").write_text("not a pdf")
    embedder = HashingEmbedder()
    rt = Runtime(settings, embedder_factory=lambda model, pooling: embedder)
    async with rt:
        await rt.ensure_instance("docs", str(src))
        yield rt


async def test_enqueued_sync_runs_on_the_worker(runtime: Runtime, redis: Redis) -> None:
    worker = build_worker(runtime.settings, runtime=runtime, handle_signals=False, poll_delay=0.05)
    worker.health_check_interval = 0.2
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await redis.exists(health_check_key()):
                break
            await asyncio.sleep(0.05)
        seen: list[tuple[int, int | None]] = []
        result = await enqueue_sync(runtime, "docs", lambda d, p: seen.append((d, p)))
        assert result["status"] == "completed"
        assert result["counts"]["completed"] == 2 and result["counts"]["error"] == 1
        second = await enqueue_sync(runtime, "docs", lambda d, p: None)
        assert second["counts"]["unchanged"] == 3 and second["counts"].get("completed", 0) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_no_worker_is_a_clear_error(runtime: Runtime) -> None:
    from rag_service.errors import RagError

    with pytest.raises(RagError, match="no worker is running"):
        await enqueue_sync(runtime, "docs", lambda d, p: None)


async def test_a_held_lock_skips_the_second_sync(runtime: Runtime, redis: Redis) -> None:
    ctx: dict[str, Any] = {"runtime": runtime, "redis": redis}
    async with instance_lock(redis, "docs") as held:
        assert held
        skipped = await sync_instance(ctx, "docs")
        assert skipped["status"] == "skipped" and "already running" in skipped["end_reason"]
    assert not await redis.exists(lock_key("docs"))  # released
    done = await sync_instance(ctx, "docs")
    assert done["status"] == "completed"


async def test_the_schedule_enqueues_each_due_instance_once(runtime: Runtime, redis: Redis) -> None:
    pool = await create_pool(
        redis_settings(runtime.settings),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE,
    )
    ctx: dict[str, Any] = {"runtime": runtime, "redis": pool}
    try:
        assert await enqueue_due_syncs(ctx) == ["docs"]  # never synced: due
        assert await enqueue_due_syncs(ctx) == []  # same interval slot: not again
        await redis.flushdb()
        await runtime.sync("docs")
        assert await enqueue_due_syncs(ctx) == []  # synced just now: not due
    finally:
        await pool.aclose()
