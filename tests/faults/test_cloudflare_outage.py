"""Fault 3: Workers AI and Vectorize unreachable for 30 s in the middle of a sync of a
`cloudflare` instance.

The fake Cloudflare API (tests/cloudflare/fake_api.py) is served over HTTP on a port of its own;
once the sync has begun writing to Vectorize, the server is stopped (connections refused, as
when the network or Cloudflare is down) and started again on the same port 30 s later, its
state kept. The client's own retry policy is the shipped one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import select

from rag_service.config import Settings
from rag_service.models import Job
from rag_service.providers.cloudflare import index_name
from rag_service.runtime import Runtime
from tests.cloudflare.fake_api import FakeCloudflare
from tests.faults.support import (
    AppServer,
    ItemRow,
    index_chunks,
    items_table,
    require,
    write_corpus,
)
from tests.serving import serve

CONFIG = {"chunk_size": 64}
OUTAGE_S = 30.0


def settings_for(fake: FakeCloudflare, data_dir: Path, folder: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        backend="cloudflare",
        cloudflare_account_id=fake.account,
        cloudflare_api_token=fake.token,
        cloudflare_api_base=fake.base_url,
        source_roots=[folder.parent],
        ingest_window_chunks=16,  # many windows: the outage lands between two of them
    )


Snapshot = tuple[dict[str, str], dict[str, str], list[ItemRow]]


def snapshot_of(fake: FakeCloudflare, data_dir: Path, items: list[ItemRow]) -> Snapshot:
    """Vectorize's ids and texts, the local keyword store's, and the items table."""
    stored = fake.vectorize.indexes[index_name("docs")].vectors
    vectors = {vid: str(v.metadata.get("text")) for vid, v in stored.items()}
    keyword = index_chunks(data_dir / "instances" / "docs" / "keyword" / "index.sqlite3")
    return vectors, keyword, items


async def clean_run(tmp_path: Path, folder: Path) -> Snapshot:
    fake = FakeCloudflare()
    async with serve(fake) as url:
        fake.base_url = url
        settings = settings_for(fake, tmp_path / "clean", folder)
        async with Runtime(settings) as rt:
            await rt.instances.ensure("docs", str(folder), CONFIG)
            result = await rt.sync("docs")
            assert result.status == "completed" and not result.counts["error"], result.end_reason
            items = await items_table(rt.sessions, "docs")
    return snapshot_of(fake, settings.data_dir, items)


async def test_cloudflare_unreachable_for_30_s_mid_sync(tmp_path: Path) -> None:
    started = time.monotonic()
    folder = write_corpus(tmp_path / "src", docs=40, paragraphs=3)
    reference = await clean_run(tmp_path, folder)
    fake = FakeCloudflare()
    fake.faults.latency = 0.2  # each call takes a while: the sync lasts a few seconds
    server = AppServer(fake)
    await server.start()
    fake.base_url = server.url
    settings = settings_for(fake, tmp_path / "data", folder)
    try:
        async with Runtime(settings) as rt:
            await rt.instances.ensure("docs", str(folder), CONFIG)
            sync = asyncio.create_task(rt.sync("docs"))
            while not fake.calls("vectorize", "/upsert"):
                require(not sync.done(), "the sync ended before it wrote to Vectorize")
                await asyncio.sleep(0.01)
            await server.stop()
            down = time.monotonic()
            require(not sync.done(), "the sync ended before the outage")
            await asyncio.wait({sync}, timeout=OUTAGE_S)
            ended_during_outage = sync.done()
            await server.start()
            outage = time.monotonic() - down
            calls_before = len(fake.requests)
            result = await asyncio.wait_for(sync, timeout=120)
            resumed = len(fake.requests) > calls_before  # it went on once Cloudflare was back
            async with rt.sessions() as session:
                job = await session.get(Job, result.job_id)
            # The job ended, and says how: completed (perhaps with items in error, to redo) or
            # failed with the reason.
            assert job is not None and job.status == result.status
            assert job.status in ("completed", "failed") and job.end_reason
            if result.status == "completed":
                assert result.counts["completed"] + result.counts["error"] == 40
            else:
                assert "Cloudflare unreachable" in job.end_reason, job.end_reason
            # The next sync repairs whatever the outage left undone.
            again = await asyncio.wait_for(rt.sync("docs"), timeout=120)
            assert again.status == "completed" and not again.counts["error"], again.end_reason
            async with rt.sessions() as session:
                statuses = (await session.scalars(select(Job.status))).all()
            assert sorted(statuses) in (["completed", "completed"], ["completed", "failed"])
            items = await items_table(rt.sessions, "docs")
        vectors, keyword, items = snapshot_of(fake, settings.data_dir, items)
    finally:
        await server.stop()
    assert outage >= OUTAGE_S
    assert ended_during_outage or resumed
    assert vectors == reference[0]  # Vectorize: same ids and texts, none duplicated or stale
    assert keyword == reference[1]  # the local keyword side too
    assert items == reference[2]
    assert time.monotonic() - started < 90
