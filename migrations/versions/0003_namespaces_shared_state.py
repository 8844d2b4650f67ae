"""namespaces, and state that lived in the data dir: API tokens and the similarity cache

A namespaces table (with `default`); instances get namespace and name: existing instances land
in `default` with their id as name, so their keys, data dirs and indexes stay as they were. No
table is rebuilt: SQLite would cascade a rebuilt `instances` table's drop onto items and jobs.
API tokens (were `api-tokens.json`, imported at start) and similarity-cache entries (were one
SQLite file per instance, dropped: a cache) move into the database, so that several API
processes on several hosts share them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:40:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_LENGTH = 129  # <namespace>.<name>, 64 characters each


def upgrade() -> None:
    namespaces = op.create_table(
        "namespaces",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(namespaces, [{"name": "default", "description": None, "created_at": _now()}])
    op.add_column(
        "instances",
        sa.Column("namespace", sa.String(length=64), nullable=False, server_default="default"),
    )
    op.add_column(
        "instances",
        sa.Column("name", sa.String(length=64), nullable=False, server_default=""),
    )
    op.execute("UPDATE instances SET name = id")
    if op.get_context().dialect.name == "postgresql":  # SQLite does not enforce lengths
        op.alter_column("instances", "name", server_default=None)
        op.alter_column("instances", "namespace", server_default=None)
        for table, column in (
            ("instances", "id"),
            ("items", "instance_id"),
            ("jobs", "instance_id"),
        ):
            op.alter_column(table, column, type_=sa.String(length=KEY_LENGTH))
    op.create_index("uq_instances_namespace_name", "instances", ["namespace", "name"], unique=True)
    _shared_state()


def _shared_state() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issued_on", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "answer_cache",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=KEY_LENGTH), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("chunks", sa.JSON(), nullable=False),
        sa.Column("digests", sa.JSON(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_answer_cache_instance_created", "answer_cache", ["instance_id", "created"])
    for table, column, length in (
        ("answer_cache_buckets", "key", None),
        ("answer_cache_items", "item", 36),
    ):
        op.create_table(
            table,
            sa.Column(column, sa.BigInteger() if length is None else sa.String(length)),
            sa.Column("entry", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(["entry"], ["answer_cache.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint(column, "entry"),
        )
        op.create_index(f"ix_{table}_entry", table, ["entry"])


def downgrade() -> None:
    for table in ("answer_cache_items", "answer_cache_buckets", "answer_cache", "api_tokens"):
        op.drop_table(table)
    op.drop_index("uq_instances_namespace_name", table_name="instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("name")
        batch.drop_column("namespace")
    op.drop_table("namespaces")


def _now() -> datetime:
    return datetime.now(UTC)
