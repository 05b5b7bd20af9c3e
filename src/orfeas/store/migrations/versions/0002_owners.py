"""Access control: users, their API keys and studio sessions; every job gets an owner.

Revision ID: 0002
Revises: 0001

Before this revision a job's `owner` was an agent's id, or NULL for a job sent to the public API (which had no
access control). Agent jobs become "agent:<id>"; the others go to "user:local", the person on the machine when
authentication is off, whose jobs an admin sees once authentication is on. The column stays nullable in the
database (on SQLite, making it NOT NULL would copy the jobs table, and dropping the old copy would cascade to
job_events); the store never writes a job without an owner.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime(timezone=True)
LOCAL_OWNER = "user:local"  # frozen copy of service.auth.LOCAL_USER's owner


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("disabled_at", _Timestamp),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("revoked_at", _Timestamp),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("expires_at", _Timestamp, nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_table(
        "server_facts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )

    jobs = sa.table("jobs", sa.column("owner", sa.String(64)))
    owner = jobs.c.owner
    op.execute(jobs.update().where(owner.is_(None)).values(owner=LOCAL_OWNER))
    legacy = sa.and_(sa.not_(owner.like("user:%")), sa.not_(owner.like("agent:%")))
    op.execute(jobs.update().where(legacy).values(owner=sa.literal("agent:") + owner))

    op.create_index("ix_jobs_owner_created_at", "jobs", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_created_at", table_name="jobs")
    op.drop_table("server_facts")
    op.drop_table("sessions")
    op.drop_table("api_keys")
    op.drop_table("users")
