"""keyword (BM25) index in PostgreSQL: chunk terms as tsvector under GIN, per-instance totals

For RAGD_KEYWORD_INDEX=postgres (rag_service/providers/pg_keyword.py): the keyword side of an
index in the database every host shares instead of an SQLite FTS5 file in the data dir. The
tables live in their own schema, `ragd_keyword`, written with SQL of their own, not in the
models' metadata: they exist on PostgreSQL only (on SQLite this migration does nothing), and a
schema comparison of the models against either database (which looks at the default schema)
stays clean. Both tables cascade from `instances`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "ragd_keyword"


def _postgres() -> bool:
    return bool(op.get_context().dialect.name == "postgresql")


def upgrade() -> None:
    if not _postgres():
        return
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # One row per instance: the chunk and token counts BM25 needs (N, average length), the
    # tokenizer the terms were made with; writers of an instance lock it.
    op.execute(
        f"""CREATE TABLE {SCHEMA}.totals (
            instance_id VARCHAR(129) PRIMARY KEY
                REFERENCES instances (id) ON DELETE CASCADE,
            tokenizer TEXT NOT NULL,
            docs BIGINT NOT NULL DEFAULT 0,
            tokens BIGINT NOT NULL DEFAULT 0
        )"""
    )
    # One row per chunk: its metadata as written (JSON text: any string survives), what filters
    # compare (JSONB), its terms with positions and its length in tokens.
    op.execute(
        f"""CREATE TABLE {SCHEMA}.chunks (
            instance_id VARCHAR(129) NOT NULL
                REFERENCES {SCHEMA}.totals (instance_id) ON DELETE CASCADE,
            chunk_id TEXT NOT NULL,
            doc_len INTEGER NOT NULL,
            tsv TSVECTOR NOT NULL,
            metadata TEXT NOT NULL,
            fmeta JSONB NOT NULL,
            PRIMARY KEY (instance_id, chunk_id)
        )"""
    )
    # No pending list: a query reads the index as written (with one, a freshly written
    # instance is searched by scanning the list, or by a sequential scan the planner prefers).
    op.execute(
        f"CREATE INDEX ix_chunks_tsv ON {SCHEMA}.chunks USING gin (tsv) WITH (fastupdate = off)"
    )


def downgrade() -> None:
    if _postgres():
        op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
