"""Migrations and models on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from rag_service import db, instances, records
from rag_service.config import Settings
from rag_service.errors import Conflict, InvalidRequest, NotFound
from rag_service.models import Instance, Item, Job, JobLog
from rag_service.runtime import Runtime


async def test_migrations_create_schema_and_are_idempotent(settings: Settings) -> None:
    engine = db.create_engine(settings.resolved_database_url)
    settings.data_dir.mkdir(parents=True)
    await db.upgrade(engine)
    await db.upgrade(engine)  # second run: nothing to do, no error
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    assert {"instances", "items", "jobs", "job_logs", "alembic_version"} <= tables


async def test_instance_item_job_round_trip(settings: Settings) -> None:
    async with Runtime(settings) as rt:
        row = await rt.instances.ensure("docs", "/tmp/somewhere", {"chunk_size": 128})
        assert instances.instance_config(row).chunk_size == 128
        async with rt.sessions() as session, session.begin():
            session.add(Item(id="i1", instance_id="docs", key="a/b.md", etag="e", size=3))
            session.add(Job(id="j1", instance_id="docs", source="user", status="running"))
            session.add(JobLog(job_id="j1", message="hello"))
        async with rt.sessions() as session:
            item = (await session.scalars(select(Item))).one()
            assert (item.key, item.status, item.chunks_count) == ("a/b.md", "queued", 0)
            assert item.created_at.tzinfo is not None
            log = (await session.scalars(select(JobLog))).one()
            assert log.message == "hello" and log.id >= 1
        # Deleting the instance cascades to its items and jobs.
        async with rt.sessions() as session, session.begin():
            await session.delete(await session.get(Instance, "docs"))
        async with rt.sessions() as session:
            assert (await session.scalars(select(Item))).first() is None


async def test_instance_validation(settings: Settings) -> None:
    async with Runtime(settings) as rt:
        async with rt.sessions() as session, session.begin():
            with pytest.raises(InvalidRequest, match="chunk_size"):
                await records.create_instance(session, "x", "/tmp", {"chunk_size": 1000})
            with pytest.raises(InvalidRequest, match="sync_interval"):
                await records.create_instance(session, "x", "/tmp", {"sync_interval": 5})
            with pytest.raises(InvalidRequest, match="lowercase"):
                await records.create_instance(session, "Bad Name", "/tmp", {})
            await records.create_instance(session, "ok", "/tmp", {})
            with pytest.raises(Conflict):
                await records.create_instance(session, "ok", "/tmp", {})
        async with rt.sessions() as session:
            with pytest.raises(NotFound):
                await records.get_instance(session, "missing")
