"""Migrations and models on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

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


async def test_item_logs_migration_keeps_existing_log_lines(settings: Settings) -> None:
    """0002 adds job_logs.item_id and details beside the lines already there, and back."""
    engine = db.create_engine(settings.resolved_database_url)
    settings.data_dir.mkdir(parents=True)

    def migrate(conn: object, verb: str, revision: str) -> None:
        cfg = db.alembic_config(settings.resolved_database_url)
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, revision)

    def columns(conn: object) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("job_logs")}

    now = "CURRENT_TIMESTAMP"
    async with engine.begin() as conn:
        await conn.run_sync(migrate, "upgrade", "0001")
        for sql in (
            f"INSERT INTO instances VALUES ('i', '/tmp', '{{}}', {now}, {now})",
            "INSERT INTO jobs (id, instance_id, source, status, counts) "
            "VALUES ('j', 'i', 'user', 'completed', '{}')",
            f"INSERT INTO job_logs (job_id, created_at, message_type, message) "
            f"VALUES ('j', {now}, 0, 'old line')",
        ):
            await conn.execute(text(sql))
        await conn.run_sync(migrate, "upgrade", "0002")
        assert {"item_id", "details"} <= await conn.run_sync(columns)
        row = (await conn.execute(text("SELECT message, item_id, details FROM job_logs"))).one()
        assert tuple(row) == ("old line", None, None)
        await conn.run_sync(migrate, "downgrade", "0001")
        assert not {"item_id", "details"} & await conn.run_sync(columns)
        assert (await conn.execute(text("SELECT message FROM job_logs"))).scalar() == "old line"
    await engine.dispose()


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
