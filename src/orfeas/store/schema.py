"""Every table of the job database, its `metadata` and the job status vocabulary, in one module.

Migrations (`store/migrations/`) and the stores import the tables from here; nothing registers a table by being
imported elsewhere, so `metadata` always holds the whole schema.
"""

import re
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


class JobStatus(StrEnum):
    """Where a job is in its life: queued → running → succeeded | failed | canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)

# Column bounds that the service checks before any write (a longer value is refused with 422, never truncated).
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # job ids are uuid4().hex
INPUT_NAME_LENGTH = 255
IDEMPOTENCY_KEY_LENGTH = 200
OWNER_LENGTH = 64
USER_NAME_LENGTH = 64

# JSON columns: Python None is stored as SQL NULL (not the JSON literal null); JSONB on PostgreSQL.
_Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_Timestamp = sa.DateTime(timezone=True)

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("stage", sa.String(32)),
    sa.Column("options", _Json, nullable=False),
    sa.Column("batch_key", sa.String(64), nullable=False),
    sa.Column("input_name", sa.String(INPUT_NAME_LENGTH), nullable=False),
    sa.Column("idempotency_key", sa.String(IDEMPOTENCY_KEY_LENGTH)),  # indexed by uq_jobs_idempotency
    sa.Column("request_index", sa.Integer, nullable=False),
    # The principal that submitted the job, "user:<id>" or "agent:<id>" (see service/auth.py); always set by the
    # store, nullable only because older databases allowed NULL (see migration 0002).
    sa.Column("owner", sa.String(OWNER_LENGTH)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # How many jobs the last claim took together with this one (itself included); NULL before the first claim.
    sa.Column("batch_size", sa.Integer),
    # Set when a worker died holding the job in a batch of n: the largest batch it may join next (n // 2, at least
    # 1), so a dead batch is retried in halves until the job that kills workers runs alone. NULL: no limit.
    sa.Column("batch_limit", sa.Integer),
    # How many times a worker died while running this job alone; `max_attempts` of them fail it (see migration 0003).
    sa.Column("solo_crashes", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("profile", _Json),
    sa.Column("result", _Json),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires_at", _Timestamp, index=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("updated_at", _Timestamp, nullable=False),
    sa.Column("started_at", _Timestamp),
    sa.Column("finished_at", _Timestamp),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in JobStatus)})", name="ck_jobs_status"),
    sa.CheckConstraint("progress BETWEEN 0 AND 100", name="ck_jobs_progress"),
    # Leading `status` also serves plain status filters; `created_at` orders the queue.
    sa.Index("ix_jobs_status_created_at", "status", "created_at"),
    # Claiming: the queued jobs of one batch key, oldest first.
    sa.Index("ix_jobs_status_batch_key_created_at", "status", "batch_key", "created_at"),
    sa.Index("ix_jobs_batch_key", "batch_key"),
    sa.Index("ix_jobs_finished_at", "finished_at"),
    # One owner's history, newest first.
    sa.Index("ix_jobs_owner_created_at", "owner", "created_at"),
)

# One request (idempotency key + owner) holds each position once. The COALESCE dates from when the owner could be
# NULL; it stays so the index matches the databases it was created on. NULL idempotency keys never collide.
sa.Index(
    "uq_jobs_idempotency",
    jobs.c.idempotency_key,
    sa.func.coalesce(jobs.c.owner, ""),
    jobs.c.request_index,
    unique=True,
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("at", _Timestamp, nullable=False),
    sa.Column("worker", sa.String(64)),
    sa.Column("detail", sa.Text),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("key_id", sa.String(40), nullable=False, unique=True),
    sa.Column("secret_version", sa.Integer, nullable=False, default=1),
    sa.Column("operations", sa.JSON, nullable=False),
    sa.Column("rate_per_minute", sa.Integer, nullable=False),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("revoked_at", _Timestamp),
    sa.Column("rotated_at", _Timestamp),
    # The rate window's running count (see store/agents.py, AgentWindow): `window_count` is how many of the agent's
    # agent_requests rows are at or after `window_tail`, the oldest still counted (NULL when none is).
    sa.Column("window_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("window_tail", _Timestamp),
    sa.CheckConstraint("rate_per_minute > 0", name="ck_agents_rate_per_minute"),
)

agent_requests = sa.Table(
    "agent_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(32), sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("at", _Timestamp, nullable=False, index=True),
    sa.UniqueConstraint("agent_id", "nonce", name="uq_agent_requests_agent_id_nonce"),
    # Leads with agent_id, so it also serves plain agent_id lookups; `at` bounds the rate window.
    sa.Index("ix_agent_requests_agent_id_at", "agent_id", "at"),
)

agent_audit = sa.Table(
    "agent_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # NULL for requests whose key is unknown; SET NULL so an agent's history outlives a deleted agent row.
    sa.Column("agent_id", sa.String(32), sa.ForeignKey("agents.id", ondelete="SET NULL"), index=True),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("outcome", sa.Integer, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("at", _Timestamp, nullable=False, index=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(USER_NAME_LENGTH), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text),  # argon2id; NULL: the user signs in with API keys only
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("disabled_at", _Timestamp),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(24), primary_key=True),  # the public part of the key, "ok_<id>_<secret>"
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("label", sa.String(100), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 hex of the random secret
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("revoked_at", _Timestamp),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # SHA-256 hex of the cookie's token
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("expires_at", _Timestamp, nullable=False, index=True),
)

# Small facts every process of an installation must agree on, such as the check value of the agent master key.
server_facts = sa.Table(
    "server_facts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
