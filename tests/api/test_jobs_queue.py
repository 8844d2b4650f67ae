"""`POST .../jobs` under `ragd serve`: the sync is queued for the arq worker (real Redis, a
real worker in this process) and the API answers at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from rag_service.api.app import create_app
from rag_service.config import Settings
from rag_service.queue import health_check_key
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from tests.serving import serve
from tests.workers.test_worker import REDIS_URL, database_url, redis  # noqa: F401
from workers.worker import build_worker

AUTH = {"Authorization": "Bearer test-token"}
JOBS = "/accounts/a/ai-search/instances/docs/jobs"


@pytest.fixture
async def api(
    settings: Settings,
    tmp_path: Path,
    redis: Redis,  # noqa: F811
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings.redis_url = REDIS_URL
    settings.sync_cooldown_s = 0  # the test asks for a second sync right after the first
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("Alpha centauri is the nearest star system.")
    embedder = HashingEmbedder()
    rt = Runtime(settings, Providers(settings, embedder_factory=lambda model, pooling: embedder))
    app = create_app(settings, rt, job_runner="queue")
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        await rt.instances.ensure("docs", str(src))
        yield http, rt


async def job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    resp = await http.get(f"{JOBS}/{job_id}")
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result


async def test_jobs_are_queued_for_the_worker(
    api: tuple[httpx.AsyncClient, Runtime],
    redis: Redis,  # noqa: F811
) -> None:
    http, rt = api
    resp = await http.post(JOBS, json={"description": "queued"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "no worker is running" in body["messages"][0]["message"]
    job_id = body["result"]["id"]
    assert (await job(http, job_id))["status"] == "queued"  # known to Redis, not started yet
    ready = (await http.get("/readyz")).json()["result"]["checks"]
    assert ready["redis"] == "ok"

    worker = build_worker(rt.settings, runtime=rt, handle_signals=False, poll_delay=0.05)
    worker.health_check_interval = 0.2
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(400):
            if (await job(http, job_id)).get("ended_at"):
                break
            await asyncio.sleep(0.05)
        done = await job(http, job_id)
        assert done["status"] == "completed" and done["counts"]["completed"] == 1
        for _ in range(100):
            if await redis.exists(health_check_key()):
                break
            await asyncio.sleep(0.05)
        second = (await http.post(JOBS)).json()
        assert second["messages"] == []  # the worker is alive now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()
    missing = await http.get(f"{JOBS}/not-a-job")
    assert missing.status_code == 404
