"""A `cloudflare` instance end to end through the fake: the docs corpus syncs into Vectorize via
Workers AI while the fake answers 10% of calls with 429 and 2% with 500; every chunk ends up
in the store exactly once, every embedding call carried CLS pooling; search and a streamed
answer work as the CLI runs them."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from rag_service.config import Settings
from rag_service.models import Item, Job, JobLog
from rag_service.providers.cloudflare import UsageMeter, VectorizeIndex, index_name
from rag_service.query.options import QueryOptions
from rag_service.runtime import Runtime
from rag_service.stats import instance_stats
from tests.cloudflare.fake_api import FakeCloudflare, Faults
from tests.ingest.test_manifest import manifest


def cloudflare_settings(fake: FakeCloudflare, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        backend="cloudflare",
        cloudflare_account_id=fake.account,
        cloudflare_api_token=fake.token,
        cloudflare_api_base=fake.base_url,
    )


async def test_cloudflare_instance_end_to_end(
    fake: FakeCloudflare, tmp_path: Path, docs_dir: Path
) -> None:
    fake.inject(Faults(rate_429=0.10, rate_500=0.02, retry_after="0"), seed=44)
    fake.mutation_delay = 0.2
    settings = cloudflare_settings(fake, tmp_path)
    meter = UsageMeter()
    async with Runtime(settings) as rt:
        await rt.instances.ensure("docs", str(docs_dir), {"chunk_size": 64})
        with meter.attach():
            result = await rt.sync("docs")
        assert result.status == "completed", result.end_reason
        _, cfg = await rt.instances.get("docs")
        index = await rt.providers.index("docs", cfg)
        assert isinstance(index, VectorizeIndex)
        assert await index.settle(timeout=30)  # Vectorize applied every write

        async with rt.sessions() as session:
            items = (await session.scalars(select(Item))).all()
        expected = {
            f"{i.id}:{n}" for i in items if i.status == "completed" for n in range(i.chunks_count)
        }
        assert len(expected) > 20 and result.counts["chunks"] == len(expected)
        stored = fake.vectorize.indexes[index_name("docs")].vectors
        assert set(stored) == expected  # each chunk once: ids are unique keys, none missing
        assert set(index.keyword.list_ids()) == expected
        assert fake.poolings and set(fake.poolings) == {"cls"}
        assert fake.stats["embeddings:429"] + fake.stats["vectorize:429"] > 0
        assert sum(n for k, n in fake.stats.items() if k.endswith(":500")) > 0
        usage = meter.snapshot()
        assert usage["models"]["@cf/baai/bge-base-en-v1.5"]["calls"] >= 1
        # The job keeps its own usage (the same calls), and the stats add up every job's.
        assert result.usage["calls"] == usage["calls"] and result.usage["neurons"] > 0
        async with rt.sessions() as session:
            job = await session.get(Job, result.job_id)
            assert job is not None and job.counts["usage"]["input_tokens"] > 0
            log = (await session.scalars(select(JobLog.message))).all()
        assert any(line.startswith("Workers AI: ") and "neurons" in line for line in log)
        assert any("the index has applied every write" in line for line in log)
        _, cfg = await rt.instances.get("docs")
        index = await rt.providers.index("docs", cfg)
        stats = await instance_stats(rt.sessions, "docs", index)
        assert stats["usage"]["calls"] == usage["calls"]

        for key, outcome, phrase in manifest(docs_dir):
            if not outcome.startswith("completed") or phrase is None:
                continue
            only = QueryOptions(
                "hybrid", match_threshold=0.0, max_num_results=50, filters={"filename": key}
            )
            texts = [
                " ".join(c.text.lower().split())
                for c in (await rt.pipeline.search("docs", phrase, only)).chunks
            ]
            assert any(" ".join(phrase.lower().split()) in t for t in texts), key

        opts = QueryOptions("hybrid", match_threshold=0.0, max_num_results=5)
        reply = await rt.pipeline.answer("docs", "Beautiful is better than ugly", opts)
        assert reply.model == "@cf/meta/llama-3.1-8b-instruct" and reply.used
        max_tokens = settings.generation_max_tokens
        answer = "".join([p async for p in reply.pieces])
        assert answer.startswith("Answer:")
        body = fake.calls("text_generation", path_part="/ai/run/")[-1].json()
        assert body["stream"] is True and body["max_tokens"] == max_tokens

        embedded = len(fake.calls("embeddings"))
        again = await rt.sync("docs")  # nothing changed: nothing embedded or written
        assert again.status == "completed" and again.counts["unchanged"] == len(items)
        assert len(fake.calls("embeddings")) == embedded


async def test_one_item_sync_keeps_its_workers_ai_usage(
    fake: FakeCloudflare, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "note.md").write_text("Vectorize stores the embeddings of every chunk.")
    settings = cloudflare_settings(fake, tmp_path)
    async with Runtime(settings) as rt:
        await rt.instances.ensure("one", str(src))
        outcome = await rt.index_item("one", "note.md")
        assert outcome.status == "completed"
        async with rt.sessions() as session:
            job = (await session.scalars(select(Job).where(Job.instance_id == "one"))).one()
            log = (await session.scalars(select(JobLog.message))).all()
        assert job.counts["completed"] == 1
        usage = job.counts["usage"]
        assert usage["models"]["@cf/baai/bge-base-en-v1.5"]["calls"] == 1
        assert usage["input_tokens"] > 0 and usage["neurons"] > 0
        assert any(line.startswith("Workers AI: 1 call, ") for line in log)
