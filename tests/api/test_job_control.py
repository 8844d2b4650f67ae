"""Job control as AI Search has it: `PATCH .../jobs/{job}` with `{"action": "cancel"}` under both
job runners (a sync stops at an item boundary and nothing half-written stays in the index), the
sync cooldown (429, code 7020 `sync_in_cooldown`), and paused instances (no scheduled syncs).
Real HTTP, real Redis, SQLite and PostgreSQL; a slowed-down fake embedder."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from arq.connections import create_pool
from cloudflare import AsyncCloudflare, ConflictError, RateLimitError
from cloudflare.types.aisearch.namespaces.instances.job_update_response import JobUpdateResponse
from redis.asyncio import Redis

from rag_service import records
from rag_service.api.app import create_app
from rag_service.config import Settings
from rag_service.ingest.index import chunk_id
from rag_service.models import Item
from rag_service.queue import QUEUE, deserialize, redis_settings, serialize
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from tests.faults.support import SlowEmbedder, index_chunks, local_index_file
from tests.serving import serve
from tests.workers.test_worker import REDIS_URL, redis  # noqa: F401
from workers.embedded import sync_due
from workers.tasks import enqueue_due_syncs
from workers.worker import build_worker

AUTH = {"Authorization": "Bearer test-token"}
ACCOUNT = "acc"
API = f"/accounts/{ACCOUNT}/ai-search"
JOBS = f"{API}/instances/docs/jobs"
NAMESPACED_JOBS = f"{API}/namespaces/default/instances/docs/jobs"
DOCS = 24
GROUP = 3  # items prepared (and, with a window of one chunk, written) together


def write_docs(folder: Path, version: int) -> None:
    """DOCS Markdown files; every sentence (so every chunk) names the version."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(DOCS):
        sentences = " ".join(
            f"Document {d} version {version} sentence {n} is about topic{d}x{n}."
            for n in range(12 * version)
        )
        (folder / f"doc{d:02}.md").write_text(f"# Document {d}\n\n{sentences}\n")


def runtime(settings: Settings, embedder: HashingEmbedder) -> Runtime:
    return Runtime(settings, Providers(settings, embedder_factory=lambda m, p: embedder))


@asynccontextmanager
async def served(
    settings: Settings, rt: Runtime, runner: Literal["inline", "queue"] = "inline"
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, rt, job_runner=runner)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as http:
        yield http


@pytest.fixture
def slow_sync(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A sync of DOCS items in windows of GROUP items, each window's embedding slowed down."""
    monkeypatch.setattr("rag_service.ingest.sync.PREPARE_GROUP", GROUP)
    settings.ingest_window_chunks = 1
    settings.redis_url = REDIS_URL
    return settings


async def until(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 60.0) -> Any:
    for _ in range(int(seconds / 0.05)):
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def job_of(http: httpx.AsyncClient, job_id: str, path: str = JOBS) -> dict[str, Any]:
    resp = await http.get(f"{path}/{job_id}")
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()["result"]
    return job


async def ended(http: httpx.AsyncClient, job_id: str, path: str = JOBS) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await job_of(http, job_id, path)
        return job if job["ended_at"] else None

    result: dict[str, Any] = await until(check, f"job {job_id} to end")
    return result


async def start(http: httpx.AsyncClient) -> str:
    resp = await http.post(JOBS, json={"description": "to cancel"})
    assert resp.status_code == 200, resp.text
    job_id: str = resp.json()["result"]["id"]
    return job_id


async def cancel(http: httpx.AsyncClient, job_id: str, path: str = JOBS) -> httpx.Response:
    return await http.patch(f"{path}/{job_id}", json={"action": "cancel"})


async def indexed_some(rt: Runtime, job_id: str) -> bool:
    """Whether the job has written at least one window (and has more to go)."""
    async with rt.sessions() as session:
        done = await records.count_by_status(session, Item, "docs")
    job = await records.get_job(rt.sessions, "docs", job_id)
    mine, _ = await records.job_progress(rt.sessions, job_id, job)
    return 0 < mine < DOCS and done.get("completed", 0) > 0


async def items_of(settings: Settings) -> list[Item]:
    async with runtime(settings, HashingEmbedder()) as rt:
        _, items = await records.list_items(rt.sessions, "docs", 1, 1000)
    return items


def assert_index_matches(settings: Settings, items: list[Item]) -> dict[str, int]:
    """The index holds exactly the chunks of the completed items, each with the text of the
    version its item was last indexed from; returns items by that version."""
    chunks = index_chunks(local_index_file(settings.data_dir, "docs"))
    assert {i.status for i in items} == {"completed"}, [(i.key, i.status) for i in items]
    assert set(chunks) == {chunk_id(i.id, n) for i in items for n in range(i.chunks_count)}
    versions: dict[str, int] = {}
    for item in items:
        texts = [chunks[chunk_id(item.id, n)] for n in range(item.chunks_count)]
        found = {v for v in (1, 2) if all(f"version {v} " in t for t in texts)}
        assert len(found) == 1, (item.key, texts)
        versions[item.key] = found.pop()
    return versions


async def synced_then_changed(rt: Runtime, src: Path) -> None:
    """The instance synced at version 1 (as `ragd sync --inline` does), then every file
    changed to version 2 (with more chunks than before)."""
    await rt.instances.ensure("docs", str(src))
    first = await rt.sync("docs")
    assert first.status == "completed" and first.counts["completed"] == DOCS
    write_docs(src, version=2)


async def cancel_midway(http: httpx.AsyncClient, rt: Runtime, path: str) -> dict[str, Any]:
    """Start a sync, cancel it once it has written a window; the job once it has ended."""
    job_id = await start(http)
    await until(lambda: indexed_some(rt, job_id), "a first window of the sync")
    resp = await cancel(http, job_id, path)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["result"]["id"] == job_id
    job = await ended(http, job_id)
    assert job["status"] == "cancelled", job
    assert job["end_reason"].startswith("cancelled"), job
    return job


async def assert_stopped_midway(settings: Settings, job: dict[str, Any]) -> None:
    """The items the job reached hold version 2, the others are still at version 1, and the
    index holds exactly their chunks."""
    items = await items_of(settings)
    versions = assert_index_matches(settings, items)
    reached = {i.key for i in items if i.job_id == job["id"]}
    assert {k for k, v in versions.items() if v == 2} == reached
    assert 0 < len(reached) < DOCS  # it stopped midway
    assert job["counts"]["completed"] == len(reached)


# Cancel


async def test_cancel_under_the_inline_runner_stops_at_an_item_boundary(
    slow_sync: Settings, tmp_path: Path
) -> None:
    settings = slow_sync
    settings.sync_cooldown_s = 0  # the first sync is the CLI's, just before
    src = tmp_path / "src"
    write_docs(src, version=1)
    rt = runtime(settings, SlowEmbedder(delay=0.3))
    async with served(settings, rt) as http:
        await synced_then_changed(rt, src)
        job = await cancel_midway(http, rt, NAMESPACED_JOBS)
        logs = (await http.get(f"{JOBS}/{job['id']}/logs")).json()["result"]
        assert any(line["message"].startswith("cancelled") for line in logs)
        again = await cancel(http, job["id"])
        assert again.status_code == 409, again.text
        assert "already ended (cancelled" in again.json()["errors"][0]["message"]
    await assert_stopped_midway(settings, job)


async def test_cancel_under_the_queue_runner_with_a_worker(
    slow_sync: Settings,
    tmp_path: Path,
    redis: Redis,  # noqa: F811
) -> None:
    settings = slow_sync
    settings.sync_cooldown_s = 0
    src = tmp_path / "src"
    write_docs(src, version=1)
    embedder = SlowEmbedder(delay=0.3)
    api_rt, worker_rt = runtime(settings, embedder), runtime(settings, embedder)
    worker = build_worker(settings, runtime=worker_rt, handle_signals=False, poll_delay=0.05)
    worker.health_check_interval = 0.2
    async with served(settings, api_rt, "queue") as http:
        await synced_then_changed(api_rt, src)
        # Queued while no worker runs: cancelled at once, and never run.
        queued = await start(http)
        assert (await job_of(http, queued))["status"] == "queued"
        resp = await cancel(http, queued)
        assert resp.status_code == 200, resp.text
        result = resp.json()["result"]
        assert result["status"] == "cancelled" and result["ended_at"] and not result["started_at"]
        running = asyncio.create_task(worker.main())
        try:
            job = await cancel_midway(http, api_rt, JOBS)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await worker.close()
        never = await job_of(http, queued)
        assert never["status"] == "cancelled" and never["started_at"] is None
    await assert_stopped_midway(settings, job)


async def test_cancel_of_an_ended_or_unknown_job_and_unknown_actions(
    settings: Settings, tmp_path: Path
) -> None:
    settings.sync_cooldown_s = 0
    src = tmp_path / "src"
    write_docs(src, version=1)
    rt = runtime(settings, HashingEmbedder())
    async with served(settings, rt) as http:
        await rt.instances.ensure("docs", str(src))
        job_id = await start(http)
        job = await ended(http, job_id)
        assert job["status"] == "completed"
        resp = await cancel(http, job_id)
        assert resp.status_code == 409, resp.text
        body = resp.json()
        assert body["success"] is False and body["errors"][0]["code"] == 7003
        message = body["errors"][0]["message"]
        assert "already ended (completed" in message and "queued or running" in message
        unknown = await http.patch(f"{JOBS}/{job_id}", json={"action": "pause"})
        assert unknown.status_code == 400 and "'cancel'" in unknown.json()["errors"][0]["message"]
        empty = await http.patch(f"{JOBS}/{job_id}", json={})
        assert empty.status_code == 400 and "action" in empty.json()["errors"][0]["message"]
        missing = await cancel(http, "no-such-job")
        assert missing.status_code == 404 and "no-such-job" in missing.text
        other = await http.patch(f"{API}/instances/nope/jobs/{job_id}", json={"action": "cancel"})
        assert other.status_code == 404


# Cooldown


def assert_cooldown(resp: httpx.Response) -> None:
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert body["success"] is False and body["result"] is None
    assert body["errors"][0]["code"] == 7020
    assert body["errors"][0]["message"].startswith("sync_in_cooldown"), body


async def test_a_sync_asked_within_the_cooldown_gets_429(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.sync_cooldown_s == 30.0  # the default
    src = tmp_path / "src"
    write_docs(src, version=1)
    rt = runtime(settings, HashingEmbedder())
    async with served(settings, rt) as http:
        await rt.instances.ensure("docs", str(src))
        job_id = await start(http)
        second = await http.post(JOBS)
        assert_cooldown(second)
        assert "ask again" in second.json()["errors"][0]["message"]
        await ended(http, job_id)
        assert_cooldown(await http.post(NAMESPACED_JOBS))  # ended, but 30 s have not passed
        # The CLI and the scheduler are not held back (they never run two syncs at once).
        assert (await rt.sync("docs")).status == "completed"


async def test_the_cooldown_holds_across_api_processes_and_after_a_cli_sync(
    settings: Settings,
    tmp_path: Path,
    redis: Redis,  # noqa: F811
) -> None:
    settings.redis_url = REDIS_URL
    src = tmp_path / "src"
    write_docs(src, version=1)
    one, two = runtime(settings, HashingEmbedder()), runtime(settings, HashingEmbedder())
    async with served(settings, one, "queue") as first, served(settings, two, "queue") as second:
        await one.instances.ensure("docs", str(src))
        job_id = await start(first)
        assert (await job_of(second, job_id))["status"] == "queued"
        assert_cooldown(await second.post(JOBS))  # the other API process queued one
        assert_cooldown(await first.post(JOBS))
    other = tmp_path / "other"
    write_docs(other, version=1)
    async with runtime(settings, HashingEmbedder()) as rt:
        await rt.instances.ensure("other", str(other))
        assert (await rt.sync("other")).status == "completed"  # as `ragd sync --inline` does
        async with served(settings, rt, "queue") as http:
            assert_cooldown(await http.post(f"{API}/instances/other/jobs"))


# Paused instances


async def test_a_paused_instance_gets_no_scheduled_sync(
    settings: Settings,
    tmp_path: Path,
    redis: Redis,  # noqa: F811
) -> None:
    settings.redis_url = REDIS_URL
    settings.sync_cooldown_s = 0
    for name in ("kept", "still"):
        write_docs(tmp_path / name, version=1)
    rt = runtime(settings, HashingEmbedder())
    async with served(settings, rt) as http:
        made = await http.post(
            f"{API}/instances", json={"id": "still", "source": str(tmp_path / "still")}
        )
        assert made.status_code == 200 and made.json()["result"]["paused"] is False
        paused = await http.put(f"{API}/instances/still", json={"paused": True})
        assert paused.status_code == 200, paused.text
        view = (await http.get(f"{API}/instances/still")).json()["result"]
        assert view["paused"] is True and view["status"] == "paused"
        stats = (await http.get(f"{API}/instances/still/stats")).json()["result"]
        assert stats["paused"] is True
        kept = await http.post(
            f"{API}/instances", json={"id": "kept", "source": str(tmp_path / "kept")}
        )
        assert kept.status_code == 200 and kept.json()["result"]["status"] == "active"

        # `ragd up`'s scheduler and the worker's cron both pass the paused instance by.
        await sync_due(rt, {}, now=0.0)
        assert await records.has_synced(rt.sessions, "kept")
        assert not await records.has_synced(rt.sessions, "still")
        pool = await create_pool(
            redis_settings(settings), job_serializer=serialize, job_deserializer=deserialize,
            default_queue_name=QUEUE,
        )  # fmt: skip
        try:
            await redis.flushdb()
            enqueued = await enqueue_due_syncs({"runtime": rt, "redis": pool})
        finally:
            await pool.aclose()
        assert "still" not in enqueued

        # A sync asked for by hand still runs, as AI Search's "Trigger sync" does.
        still = f"{API}/instances/still/jobs"
        job_id = (await http.post(still)).json()["result"]["id"]
        assert (await ended(http, job_id, still))["status"] == "completed"
        resumed = await http.put(f"{API}/instances/still", json={"paused": False})
        assert resumed.json()["result"]["paused"] is False


# Cloudflare's SDK


def strict(data: Any) -> JobUpdateResponse:
    """Validate like pydantic does, not like the SDK's lenient `construct`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return JobUpdateResponse.model_validate(data)


async def test_the_sdk_cancels_a_job_and_reads_the_cooldown(
    slow_sync: Settings, tmp_path: Path
) -> None:
    settings = slow_sync
    src = tmp_path / "src"
    write_docs(src, version=1)
    rt = runtime(settings, SlowEmbedder(delay=0.3))
    async with served(settings, rt) as http:
        await rt.instances.ensure("docs", str(src))
        client = AsyncCloudflare(api_token="test-token", base_url=str(http.base_url), max_retries=0)
        jobs = client.aisearch.namespaces.instances.jobs
        async with client:
            job = await jobs.create("docs", account_id=ACCOUNT, name="default")
            await until(lambda: indexed_some(rt, job.id), "a first window of the sync")
            raw = await jobs.with_raw_response.update(
                job.id, account_id=ACCOUNT, name="default", id="docs", action="cancel"
            )
            body = json.loads(raw.http_response.text)
            assert body["success"] is True and body["errors"] == []
            cancelled = strict(body["result"])
            assert cancelled.id == job.id and cancelled.source == "user"
            final = await ended(http, job.id)
            assert final["status"] == "cancelled"
            with pytest.raises(ConflictError) as again:
                await jobs.update(
                    job.id, account_id=ACCOUNT, name="default", id="docs", action="cancel"
                )
            assert "already ended" in str(again.value)
            with pytest.raises(RateLimitError) as cooldown:
                await jobs.create("docs", account_id=ACCOUNT, name="default")
            assert cooldown.value.status_code == 429
            assert "sync_in_cooldown" in str(cooldown.value) and "7020" in str(cooldown.value)
