"""The schema from before migrations: jobs and their events, agents with their requests and audit log.

Revision ID: 0001
Revises: (none)

A database made by the pre-migration code (`metadata.create_all`) has these tables but no alembic_version; on it
this revision creates only the tables it lacks (an installation from before the agent API has no agent tables) and
keeps every row, so old and new databases arrive at the same schema.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types of that time (a migration must not change when db.py does).
_Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_Timestamp = sa.DateTime(timezone=True)
_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in _TABLES:
        if name not in existing:
            create()


def downgrade() -> None:
    for name, _create in reversed(_TABLES):
        op.drop_table(name)


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(32)),
        sa.Column("options", _Json, nullable=False),
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("input_name", sa.String(255), nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_index", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("profile", _Json),
        sa.Column("result", _Json),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", _Timestamp),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("updated_at", _Timestamp, nullable=False),
        sa.Column("started_at", _Timestamp),
        sa.Column("finished_at", _Timestamp),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in _STATUSES)})", name="ck_jobs_status"),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="ck_jobs_progress"),
    )
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.create_index(
        "uq_jobs_idempotency",
        "jobs",
        [sa.column("idempotency_key"), sa.func.coalesce(sa.column("owner"), ""), sa.column("request_index")],
        unique=True,
    )
    op.create_index("ix_jobs_status_batch_key_created_at", "jobs", ["status", "batch_key", "created_at"])
    op.create_index("ix_jobs_batch_key", "jobs", ["batch_key"])
    op.create_index("ix_jobs_lease_expires_at", "jobs", ["lease_expires_at"])


def _create_job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", _Timestamp, nullable=False),
        sa.Column("worker", sa.String(64)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def _create_agents() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("key_id", sa.String(40), nullable=False, unique=True),
        sa.Column("secret_version", sa.Integer, nullable=False),
        sa.Column("operations", sa.JSON, nullable=False),
        sa.Column("rate_per_minute", sa.Integer, nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("revoked_at", _Timestamp),
        sa.Column("rotated_at", _Timestamp),
        sa.CheckConstraint("rate_per_minute > 0", name="ck_agents_rate_per_minute"),
    )


def _create_agent_requests() -> None:
    op.create_table(
        "agent_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("agent_id", sa.String(32), sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("at", _Timestamp, nullable=False),
        sa.UniqueConstraint("agent_id", "nonce", name="uq_agent_requests_agent_id_nonce"),
    )
    op.create_index("ix_agent_requests_at", "agent_requests", ["at"])
    op.create_index("ix_agent_requests_agent_id_at", "agent_requests", ["agent_id", "at"])


def _create_agent_audit() -> None:
    op.create_table(
        "agent_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("agent_id", sa.String(32), sa.ForeignKey("agents.id", ondelete="SET NULL")),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("at", _Timestamp, nullable=False),
    )
    op.create_index("ix_agent_audit_agent_id", "agent_audit", ["agent_id"])
    op.create_index("ix_agent_audit_at", "agent_audit", ["at"])


# In dependency order: a table comes after the tables its foreign keys point to.
_TABLES = (
    ("jobs", _create_jobs),
    ("job_events", _create_job_events),
    ("agents", _create_agents),
    ("agent_requests", _create_agent_requests),
    ("agent_audit", _create_agent_audit),
)
