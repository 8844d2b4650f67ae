"""Under `ragd serve` an upload goes through the queue and takes the instance's Redis lock like
a sync: one that arrives while a worker syncs the instance waits for the sync to end, then is
indexed. The API and the worker are separate runtimes (as separate processes would be) on one
database and data dir, with this machine's Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from rag_service import records
from rag_service.api.app import create_app
from rag_service.config import Settings
from rag_service.ingest.index import chunk_id
from rag_service.providers.protocols import Vector
from rag_service.queue import lock_key
from rag_service.records import item_id_for
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from tests.serving import serve
from tests.workers.test_worker import REDIS_URL, database_url, redis  # noqa: F401
from workers.worker import build_worker

AUTH = {"Authorization": "Bearer test-token"}
BASE = "/accounts/a/ai-search/instances/docs"
DOCS = 24


class SlowEmbedder(HashingEmbedder):
    """Each window of a sync takes a while, so that the upload lands mid-sync."""

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        await asyncio.sleep(0.25)
        return await super().embed_documents(texts)


def runtime(settings: Settings, embedder: HashingEmbedder) -> Runtime:
    return Runtime(settings, Providers(settings, embedder_factory=lambda m, p: embedder))


async def until(check: Any, what: str, seconds: float = 60.0) -> Any:
    for _ in range(int(seconds / 0.05)):
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_upload_during_a_worker_sync_waits_and_both_are_done(
    settings: Settings,
    tmp_path: Path,
    redis: Redis,  # noqa: F811
) -> None:
    settings.redis_url = REDIS_URL
    settings.ingest_window_chunks = 2
    embedder = SlowEmbedder()
    api_rt, worker_rt = runtime(settings, embedder), runtime(settings, embedder)
    worker = build_worker(settings, runtime=worker_rt, handle_signals=False, poll_delay=0.05)
    worker.health_check_interval = 0.2
    app = create_app(settings, api_rt, job_runner="queue")
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        created = await http.post("/accounts/a/ai-search/instances", json={"id": "docs"})
        assert created.status_code == 200, created.text  # uploads go to its managed folder
        for n in range(DOCS):
            path = settings.instance_dir("docs") / "uploads" / f"doc{n:02}.md"
            path.write_text(f"Document {n} is about topic number {n}.")
        running = asyncio.create_task(worker.main())
        try:
            job_id = (await http.post(f"{BASE}/jobs")).json()["result"]["id"]

            async def syncing() -> bool:
                job = (await http.get(f"{BASE}/jobs/{job_id}")).json()["result"]
                return job["status"] == "running" and bool(await redis.exists(lock_key("docs")))

            await until(syncing, "the worker's sync to start")
            upload = await http.post(
                f"{BASE}/items", files={"file": ("late.md", b"A late upload about comets.")}
            )
            assert upload.status_code == 200, upload.text
            assert upload.json()["result"]["status"] == "queued"
            assert await redis.exists(lock_key("docs"))  # it arrived while the sync held it

            async def job_done() -> dict[str, Any] | None:
                job: dict[str, Any] = (await http.get(f"{BASE}/jobs/{job_id}")).json()["result"]
                return job if job.get("ended_at") else None

            job = await until(job_done, "the sync to end")
            assert job["status"] == "completed", job
            late = item_id_for("docs", "late.md")

            async def upload_done() -> dict[str, Any] | None:
                resp = await http.get(f"{BASE}/items/{late}")
                item: dict[str, Any] = resp.json().get("result") or {}
                return item if item.get("status") == "completed" else None

            await until(upload_done, "the upload to be indexed")
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await worker.close()
    # A fresh runtime reads the index as it is on disk: every item's chunks, each once.
    async with runtime(settings, HashingEmbedder()) as check:
        total, items = await records.list_items(check.sessions, "docs", 1, 100)
        assert total == DOCS + 1 and {i.status for i in items} == {"completed"}
        _, cfg = await check.instances.get("docs")
        index = await check.providers.index("docs", cfg)
        ids = [chunk_id(i.id, n) for i in items for n in range(i.chunks_count)]
        assert len(await index.get(ids)) == len(ids) == await index.count()
        # The upload's own job ran after the sync's: they took turns on the lock.
        late_item = await records.get_item(check.sessions, "docs", item_id_for("docs", "late.md"))
        sync_job = await records.get_job(check.sessions, "docs", job_id)
        late_job = await records.get_job(check.sessions, "docs", late_item.job_id or "")
        assert sync_job and late_job and sync_job.ended_at and late_job.started_at
        assert late_job.started_at >= sync_job.ended_at
        found = await check.pipeline.search("docs", "comets")
        assert found.chunks and found.chunks[0].key == "late.md"


async def test_under_ragd_up_an_upload_during_a_sync_is_indexed_after_it(
    settings: Settings,
) -> None:
    """The same with syncs in the API's own process (`ragd up`): the upload waits for the
    sync on the process's lock instead of being dropped."""
    settings.ingest_window_chunks = 2
    rt = runtime(settings, SlowEmbedder())
    async with (
        serve(create_app(settings, rt)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as http,
    ):
        assert (await http.post("/accounts/a/ai-search/instances", json={"id": "docs"})).is_success
        for n in range(DOCS):
            path = settings.instance_dir("docs") / "uploads" / f"doc{n:02}.md"
            path.write_text(f"Document {n} is about topic number {n}.")
        job_id = (await http.post(f"{BASE}/jobs")).json()["result"]["id"]
        assert rt.is_syncing("docs")
        upload = await http.post(
            f"{BASE}/items", files={"file": ("late.md", b"A late upload about comets.")}
        )
        assert upload.json()["result"]["status"] == "queued" and rt.is_syncing("docs")
        late = item_id_for("docs", "late.md")

        async def upload_done() -> bool:
            item = (await http.get(f"{BASE}/items/{late}")).json().get("result") or {}
            return item.get("status") == "completed"

        await until(upload_done, "the upload to be indexed")
        job = (await http.get(f"{BASE}/jobs/{job_id}")).json()["result"]
        assert job["status"] == "completed"
        found = (await http.post(f"{BASE}/search", json={"query": "comets"})).json()["result"]
        assert found["chunks"][0]["item"]["key"] == "late.md"
