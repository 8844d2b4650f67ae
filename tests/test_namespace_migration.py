"""The namespaces migration on real SQLite and PostgreSQL: data written under the first schema
keeps its ids, lands in `default`, and the schema ends as the models describe it."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from rag_service import db, records
from rag_service.config import Settings
from rag_service.errors import Conflict, NotFound
from rag_service.models import Base, Instance
from rag_service.namespaces import instance_key
from rag_service.runtime import Runtime


async def _upgrade_to(settings: Settings, revision: str) -> None:
    engine = db.create_engine(settings.resolved_database_url)

    def run(conn: Any) -> None:
        cfg = db.alembic_config(settings.resolved_database_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
    await engine.dispose()


async def test_existing_instances_land_in_default(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    await _upgrade_to(settings, "0001")
    engine = db.create_engine(settings.resolved_database_url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO instances (id, source, config, created_at, modified_at) "
                "VALUES ('docs', '/tmp/docs', '{}', '2026-01-01', '2026-01-01')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO items (id, instance_id, key, etag, size, last_modified, status, "
                "chunks_count, chunk_high_water, metadata, created_at, updated_at, last_seen_at) "
                "VALUES ('i1', 'docs', 'a.md', 'e', 3, 0, 'completed', 2, 2, '{}', "
                "'2026-01-01', '2026-01-01', '2026-01-01')"
            )
        )
    await engine.dispose()
    await _upgrade_to(settings, "head")

    engine = db.create_engine(settings.resolved_database_url)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT id, namespace, name FROM instances"))).one()
        assert tuple(row) == ("docs", "default", "docs")
        items = (await conn.execute(text("SELECT instance_id FROM items"))).scalars().all()
        assert items == ["docs"]  # nothing cascaded away
        names = (await conn.execute(text("SELECT name FROM namespaces"))).scalars().all()
        assert names == ["default"]
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )
    await engine.dispose()
    assert [d for d in diff if not _sqlite_length_only(d)] == []


def _sqlite_length_only(change: Any) -> bool:
    """SQLite keeps the declared lengths of 0001 (it does not enforce them)."""
    return isinstance(change, list) and all(c[0] == "modify_type" for c in change)


async def test_names_are_unique_per_namespace(settings: Settings) -> None:
    async with Runtime(settings) as rt:
        async with rt.sessions() as session, session.begin():
            await records.create_namespace(session, "team", None, limit=100)
            await records.create_instance(session, "docs", "/tmp/a", {})
            await records.create_instance(session, instance_key("team", "docs"), "/tmp/b", {})
            with pytest.raises(Conflict, match="'docs' already exists in namespace 'team'"):
                await records.create_instance(session, instance_key("team", "docs"), "/tmp/c", {})
            with pytest.raises(NotFound, match="namespace 'nope'"):
                await records.create_instance(session, instance_key("nope", "docs"), "/tmp", {})
        async with rt.sessions() as session:
            team = await session.get(Instance, "team.docs")
            assert team is not None and (team.namespace, team.name) == ("team", "docs")
            listed = await records.find_instances(rt.sessions, "team", None, newest_first=True)
            assert [r.id for r in listed] == ["team.docs"]
        async with rt.sessions() as session, session.begin():
            with pytest.raises(Conflict, match="holds 1 instance"):
                await records.delete_namespace(session, "team")
