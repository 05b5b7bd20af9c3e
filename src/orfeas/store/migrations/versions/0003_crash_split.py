"""Crashes charged only to the guilty: a dead worker's batch is retried in halves before any job is charged.

Revision ID: 0003
Revises: 0002

`batch_size` is how many jobs the last claim took together; `batch_limit` caps the batch a job may join after a
worker died holding it (NULL: no cap); `solo_crashes` counts the deaths of workers that ran the job alone, the only
ones that count towards `max_attempts`. Existing jobs start without a size or cap and with no crashes (a job running
now whose worker dies is then taken as alone, as before). The columns are added in place (no table copy on SQLite).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_size", sa.Integer))
    op.add_column("jobs", sa.Column("batch_limit", sa.Integer))
    op.add_column("jobs", sa.Column("solo_crashes", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("jobs", "solo_crashes")
    op.drop_column("jobs", "batch_limit")
    op.drop_column("jobs", "batch_size")
