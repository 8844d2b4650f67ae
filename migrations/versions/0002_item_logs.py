"""item logs: job log lines may name the item they are about, with its event's details

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases: no table is rebuilt.
    op.add_column("job_logs", sa.Column("item_id", sa.String(length=36), nullable=True))
    op.add_column("job_logs", sa.Column("details", sa.JSON(), nullable=True))
    op.create_index("ix_job_logs_item_id", "job_logs", ["item_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_logs_item_id", table_name="job_logs")
    with op.batch_alter_table("job_logs", schema=None) as batch_op:
        batch_op.drop_column("details")
        batch_op.drop_column("item_id")
