"""Whole syncs over a real folder, a real index and real databases (model faked by hashing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from rag_service.config import Settings
from rag_service.models import Item, Job, JobLog
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(
        root / "animals/cats.md", "Cats purr when they are content. A cat sleeps most of the day."
    )
    write(root / "animals/dogs.txt", "Dogs bark at the postman. A dog wags its tail when happy.")
    write(root / "space.md", "Saturn has rings of ice. Jupiter is the largest planet.")
    write(root / "broken.pdf", "this is not a pdf at all")
    write(root / "empty.md", "")
    return root


@pytest.fixture
async def runtime(settings: Settings, folder: Path) -> Runtime:
    embedder = HashingEmbedder()
    rt = Runtime(settings, Providers(settings, embedder_factory=lambda model, pooling: embedder))
    await rt.start()
    await rt.instances.ensure("docs", str(folder), {"chunk_size": 64, "chunk_overlap": 0})
    yield rt  # type: ignore[misc]
    await rt.close()


def embedder_of(rt: Runtime) -> HashingEmbedder:
    emb = rt.providers._embedder_factory("any", None)  # the one the fixture's factory returns
    assert isinstance(emb, HashingEmbedder)
    return emb


async def top_keys(rt: Runtime, query: str, kind: str = "hybrid") -> list[str]:
    opts = QueryOptions(retrieval_type=kind, match_threshold=0.0)  # type: ignore[arg-type]
    return [c.key for c in (await rt.pipeline.search("docs", query, opts)).chunks]


async def test_first_sync_indexes_readable_files_and_records_errors(runtime: Runtime) -> None:
    result = await runtime.sync("docs")
    assert result.status == "completed"
    assert result.counts["completed"] == 3
    assert result.counts["error"] == 1 and result.counts["skipped"] == 1
    async with runtime.sessions() as session:
        items = {i.key: i for i in (await session.scalars(select(Item))).all()}
        job = (await session.scalars(select(Job))).one()
        logs = (await session.scalars(select(JobLog).where(JobLog.job_id == job.id))).all()
    assert items["broken.pdf"].status == "error" and "not a PDF" in (
        items["broken.pdf"].error or ""
    )
    assert items["empty.md"].status == "skipped" and "empty" in (items["empty.md"].error or "")
    assert (
        items["animals/cats.md"].status == "completed"
        and items["animals/cats.md"].chunks_count >= 1
    )
    assert job.status == "completed" and job.ended_at is not None and job.source == "user"
    assert any("broken.pdf" in line.message for line in logs)
    assert (await top_keys(runtime, "why do cats purr"))[0] == "animals/cats.md"
    assert (await top_keys(runtime, "largest planet", "keyword"))[0] == "space.md"


async def test_second_sync_embeds_nothing_edit_reindexes_one_delete_removes(
    runtime: Runtime, folder: Path
) -> None:
    await runtime.sync("docs")
    emb = embedder_of(runtime)
    emb.embedded.clear()

    second = await runtime.sync("docs")
    assert second.counts["unchanged"] == 5 and second.counts["completed"] == 0
    assert emb.embedded == []

    write(folder / "space.md", "Neptune is an ice giant with supersonic winds.", time.time() + 5)
    third = await runtime.sync("docs")
    assert third.counts["changed"] == 1 and third.counts["completed"] == 1
    assert all("Neptune" in text for text in emb.embedded) and emb.embedded
    assert (await top_keys(runtime, "supersonic winds neptune"))[0] == "space.md"
    assert "space.md" not in await top_keys(runtime, "Saturn rings", "keyword")

    (folder / "animals/dogs.txt").unlink()
    fourth = await runtime.sync("docs")
    assert fourth.counts["deleted"] == 1
    assert "animals/dogs.txt" not in await top_keys(runtime, "dogs bark at the postman")
    async with runtime.sessions() as session:
        keys = set((await session.scalars(select(Item.key))).all())
    assert "animals/dogs.txt" not in keys


async def test_shorter_new_version_drops_leftover_chunks(runtime: Runtime, folder: Path) -> None:
    long_text = "\n\n".join(f"Paragraph {n} talks about topic{n} in detail." * 3 for n in range(12))
    write(folder / "long.md", long_text)
    await runtime.sync("docs")
    _, cfg = await runtime.instances.get("docs")
    index = await runtime.providers.index("docs", cfg)
    async with runtime.sessions() as session:
        item = (await session.scalars(select(Item).where(Item.key == "long.md"))).one()
    assert item.chunks_count > 3
    ids_before = index.ids_with_prefix(f"{item.id}:")  # type: ignore[attr-defined]
    assert len(ids_before) == item.chunks_count

    write(folder / "long.md", "Now a single short paragraph.", time.time() + 5)
    await runtime.sync("docs")
    assert index.ids_with_prefix(f"{item.id}:") == [f"{item.id}:0"]  # type: ignore[attr-defined]
    assert "long.md" not in await top_keys(runtime, "topic7 in detail", "keyword")


async def test_file_that_turns_unreadable_loses_its_old_chunks(
    runtime: Runtime, folder: Path
) -> None:
    await runtime.sync("docs")
    write(folder / "space.md", "", time.time() + 5)
    result = await runtime.sync("docs")
    assert result.counts["skipped"] == 1 and result.counts["changed"] == 1
    assert "space.md" not in await top_keys(runtime, "Saturn rings of ice", "keyword")


async def test_missing_source_folder_fails_the_job_cleanly(runtime: Runtime, folder: Path) -> None:
    await runtime.instances.set_source("docs", str(folder / "nope"))
    result = await runtime.sync("docs")
    assert result.status == "failed" and "does not exist" in result.end_reason


async def test_an_unexpected_failure_is_confined_to_its_item(
    runtime: Runtime, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_service.ingest import items as items_module

    real = items_module.extract_isolated

    async def flaky(key: str, data: bytes) -> str:
        if key == "space.md":
            raise RuntimeError("a bug")
        return await real(key, data)

    monkeypatch.setattr(items_module, "extract_isolated", flaky)
    result = await runtime.sync("docs")
    assert result.status == "completed" and result.counts["completed"] == 2
    async with runtime.sessions() as session:
        item = (await session.scalars(select(Item).where(Item.key == "space.md"))).one()
    assert item.status == "error" and item.error == "internal error while indexing: RuntimeError"
    monkeypatch.setattr(items_module, "extract_isolated", real)
    again = await runtime.sync("docs")  # retried: its version was not recorded
    assert again.counts["completed"] == 1


async def test_a_job_left_running_by_a_dead_process_is_closed(runtime: Runtime) -> None:
    from rag_service import records

    stale = await records.start_job(runtime.sessions, "docs", "schedule")
    await runtime.sync("docs")
    async with runtime.sessions() as session:
        job = await session.get(Job, stale.id)
    assert job is not None and job.status == "failed" and "interrupted" in (job.end_reason or "")


async def test_a_source_that_fails_for_a_moment_is_retried(
    runtime: Runtime, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_service.errors import SourceError
    from rag_service.ingest import retry
    from rag_service.providers.folder_source import FolderSource

    monkeypatch.setattr(retry, "BASE_DELAY_S", 0.001)
    real, failures = FolderSource.fetch, {"space.md": 2, "animals/dogs.txt": 99}

    async def flaky(self: FolderSource, key: str, max_bytes: int) -> bytes:
        if failures.get(key, 0) > 0:
            failures[key] -= 1
            raise SourceError("S3 error 503", transient=True)
        return await real(self, key, max_bytes)

    monkeypatch.setattr(FolderSource, "fetch", flaky)
    result = await runtime.sync("docs")
    assert result.status == "completed" and result.counts["completed"] == 2
    async with runtime.sessions() as session:
        items = {i.key: i for i in (await session.scalars(select(Item))).all()}
    assert items["space.md"].status == "completed"  # two 503s, then read
    dogs = items["animals/dogs.txt"]
    assert dogs.status == "error" and dogs.error == "S3 error 503" and dogs.etag == ""
    monkeypatch.setattr(FolderSource, "fetch", real)
    again = await runtime.sync("docs")  # a transient failure is tried again next time
    assert again.counts["completed"] == 1 and again.counts["unchanged"] == 4


async def test_items_are_queued_before_they_are_indexed(runtime: Runtime) -> None:
    seen: list[tuple[str, str]] = []

    async def statuses() -> dict[str, str]:
        async with runtime.sessions() as session:
            return {i.key: i.status for i in (await session.scalars(select(Item))).all()}

    def progress(status: str, info: object, detail: str) -> None:
        seen.append((status, getattr(info, "key", "")))

    from rag_service.ingest import items as items_module

    real = items_module.prepare_window
    snapshots: list[dict[str, str]] = []

    async def spy(*args: object, **kwargs: object) -> items_module.Prepared:
        snapshots.append(await statuses())
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rag_service.ingest.sync.prepare_window", spy)
        await runtime.sync("docs", progress=progress)
    assert set(snapshots[0].values()) == {"queued"} and len(snapshots[0]) == 5
    assert {s for s, _ in seen} == {"completed", "error", "skipped"}


async def test_one_item_is_indexed_or_deleted_on_its_own(runtime: Runtime, folder: Path) -> None:
    await runtime.sync("docs")
    write(folder / "space.md", "Neptune is the windiest planet.")
    outcome = await runtime.index_item("docs", "space.md")
    assert outcome.status == "completed" and outcome.chunks == 1
    assert (await top_keys(runtime, "windiest planet", "keyword"))[0] == "space.md"
    assert await top_keys(runtime, "Saturn rings", "keyword") == []
    assert await runtime.delete_item("docs", "animals/cats.md")
    assert "animals/cats.md" not in await top_keys(runtime, "cats purr", "keyword")
    assert not await runtime.delete_item("docs", "animals/cats.md")
    (folder / "space.md").unlink()
    gone = await runtime.index_item("docs", "space.md")
    assert gone.status == "deleted" and await top_keys(runtime, "windiest", "keyword") == []
    async with runtime.sessions() as session:
        keys = {i.key for i in (await session.scalars(select(Item))).all()}
        jobs = (await session.scalars(select(Job).where(Job.description.is_not(None)))).all()
    assert keys == {"animals/dogs.txt", "broken.pdf", "empty.md"}
    assert [j.status for j in jobs] == ["completed", "completed"]


@pytest.mark.parametrize("in_process", [True, False])
async def test_small_windows_index_the_same(
    runtime: Runtime, folder: Path, in_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag_service.ingest import items as items_module

    for n in range(70):
        write(folder / f"notes/n{n:02}.md", f"Note {n} is about topic{n} and nothing else.")
    monkeypatch.setattr(items_module, "PREPARE_GROUP", 8)
    monkeypatch.setattr("rag_service.ingest.sync.PREPARE_GROUP", 8)
    runtime.settings.ingest_window_chunks = 20
    await runtime.sync("docs")  # loads the embedder
    emb = embedder_of(runtime)
    monkeypatch.setattr(emb, "in_process", in_process, raising=False)
    calls: list[int] = []
    real = emb.embed_documents

    async def counting(texts: list[str]) -> object:
        calls.append(len(texts))
        return await real(texts)

    monkeypatch.setattr(emb, "embed_documents", counting)
    for n in range(0, 70, 2):
        write(folder / f"notes/n{n:02}.md", f"Note {n} is now about subject{n}.", time.time() + 5)
    result = await runtime.sync("docs")
    assert result.counts["changed"] == 35 and result.counts["completed"] == 35
    assert calls == [24, 11]  # groups of 8 one-chunk items, embedded once >= 20 chunks wait
    assert (await top_keys(runtime, "subject34", "keyword"))[0] == "notes/n34.md"
    assert await top_keys(runtime, "topic34", "keyword") == []


async def test_a_sync_drops_cached_answers_grounded_on_changed_items(
    runtime: Runtime, folder: Path
) -> None:
    from rag_service.retrieve.cache import AnswerCache

    await runtime.sync("docs")
    cache = AnswerCache(runtime.sessions, "docs")
    opts = QueryOptions(retrieval_type="keyword", match_threshold=0.0)
    for question in ("largest planet", "why do cats purr"):
        await cache.store(
            "s",
            question,
            "m",
            "an answer",
            (await runtime.pipeline.search("docs", question, opts)).chunks,
        )
    write(folder / "space.md", "Mars is red.", time.time() + 5)
    await runtime.sync("docs")
    assert await cache.lookup("s", "largest planet", "close_enough") is None
    assert await cache.lookup("s", "why do cats purr", "close_enough") is not None
    assert await runtime.delete_item("docs", "animals/cats.md")
    assert await cache.lookup("s", "why do cats purr", "close_enough") is None
