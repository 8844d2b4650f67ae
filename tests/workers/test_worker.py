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
from rag_service.queue import (
    QUEUE,
    deserialize,
    health_check_key,
    instance_lock,
    lock_key,
    redis_settings,
    serialize,
    sync_and_follow,
)
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from workers import tasks
from workers.tasks import enqueue_due_syncs, sync_instance
from workers.worker import build_worker

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
    rt = Runtime(settings, Providers(settings, embedder_factory=lambda model, pooling: embedder))
    async with rt:
        await rt.instances.ensure("docs", str(src))
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
        result = await sync_and_follow(
            runtime.settings, runtime.sessions, "docs", lambda d, p: seen.append((d, p))
        )
        assert result["status"] == "completed"
        assert result["counts"]["completed"] == 2 and result["counts"]["error"] == 1
        second = await sync_and_follow(
            runtime.settings, runtime.sessions, "docs", lambda d, p: None
        )
        assert second["counts"]["unchanged"] == 3 and second["counts"].get("completed", 0) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_no_worker_is_a_clear_error(runtime: Runtime) -> None:
    from rag_service.errors import RagError

    with pytest.raises(RagError, match="no worker is running"):
        await sync_and_follow(runtime.settings, runtime.sessions, "docs", lambda d, p: None)


async def test_a_held_lock_skips_the_second_sync(
    runtime: Runtime, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "USER_LOCK_WAIT_S", 0.6)
    ctx: dict[str, Any] = {"runtime": runtime, "redis": redis}
    async with instance_lock(redis, "docs") as held:
        assert held
        skipped = await sync_instance(ctx, "docs")
        assert skipped["status"] == "skipped" and "already running" in skipped["end_reason"]
        scheduled = await sync_instance(ctx, "docs", "schedule")
        assert scheduled["status"] == "skipped"
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


async def test_a_user_sync_waits_for_a_lock_that_is_released(
    runtime: Runtime, redis: Redis
) -> None:
    ctx: dict[str, Any] = {"runtime": runtime, "redis": redis}

    async def hold_briefly() -> None:
        async with instance_lock(redis, "docs") as held:
            assert held
            await asyncio.sleep(1.0)

    holder = asyncio.create_task(hold_briefly())
    await asyncio.sleep(0.1)
    done = await sync_instance(ctx, "docs")  # waits for the holder instead of skipping
    await holder
    assert done["status"] == "completed" and done["counts"]["completed"] == 2


async def test_transient_failures_are_retried_by_arq_permanent_ones_are_not(
    runtime: Runtime, redis: Redis, tmp_path: Path
) -> None:
    from arq import Retry

    from rag_service.errors import SourceError

    ctx: dict[str, Any] = {"runtime": runtime, "redis": redis, "job_try": 1}
    real_source = runtime.providers.source

    def failing(row: Any, cfg: Any) -> Any:
        source = real_source(row, cfg)

        async def unreachable(key: str, max_bytes: int) -> bytes:
            raise SourceError("cannot reach the S3 endpoint", transient=True)

        source.fetch = unreachable  # type: ignore[method-assign]
        return source

    runtime.providers.source = failing  # type: ignore[method-assign]
    from rag_service.ingest import retry

    retry.BASE_DELAY_S, saved = 0.001, retry.BASE_DELAY_S
    try:
        with pytest.raises(Retry):
            await tasks.index_item(ctx, "docs", "a.md")
        ctx["job_try"] = tasks.MAX_TRIES  # the last try reports instead of retrying
        last = await tasks.index_item(ctx, "docs", "a.md")
        assert last["status"] == "error" and "cannot reach" in last["detail"]
    finally:
        retry.BASE_DELAY_S = saved
        runtime.providers.source = real_source  # type: ignore[method-assign]
    ctx["job_try"] = 1
    bad = await tasks.index_item(ctx, "docs", "bad.pdf")  # a broken file: not retried
    assert bad["status"] == "error" and "PDF" in bad["detail"]
    good = await tasks.index_item(ctx, "docs", "a.md")
    assert good == {"key": "a.md", "status": "completed", "detail": "1"}
    assert (await tasks.delete_item(ctx, "docs", "a.md"))["status"] == "deleted"
    assert (await tasks.delete_item(ctx, "docs", "a.md"))["status"] == "unknown"
