"""Database engine and the table definitions of the job store (SQLite by default, PostgreSQL for several hosts)."""

import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

# Execution option that marks a connection as read-only; see `read_only` and `_begin_sqlite`.
_READ_ONLY = "orfeas_read_only"


class JobStatus(StrEnum):
    """Where a job is in its life: queued → running → succeeded | failed | canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)

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
    sa.Column("input_name", sa.String(255), nullable=False),
    sa.Column("idempotency_key", sa.String(200)),  # indexed by uq_jobs_idempotency, which leads with it
    sa.Column("request_index", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
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
)

# One request (idempotency key + owner) holds each position once. The owner goes through COALESCE because NULLs never
# collide in a plain unique constraint, and anonymous requests must be deduplicated too. NULL idempotency keys still
# never collide, as intended.
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


def sqlite_url(data_dir: Path) -> str:
    """The default database: one SQLite file in the data directory."""
    return f"sqlite:///{Path(data_dir) / 'orfeas.db'}"


def create_db_engine(url: str, application_name: str | None = None) -> sa.Engine:
    """An engine for a SQLite file or a PostgreSQL server, set up for several concurrent claimers.

    On PostgreSQL every connection carries `application_name` (default `orfeas-<pid>`; a URL's own wins), so an
    operator can tell the API's connections from a worker's in pg_stat_activity.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Shared by the API thread and the worker thread; the pool hands each thread its own connection at a time.
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _configure_sqlite)
        sa.event.listen(engine, "begin", _begin_sqlite)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {}
        if "application_name" not in parsed.query:
            connect_args["application_name"] = application_name or f"orfeas-{os.getpid()}"
        # pre-ping replaces a pooled connection the server closed (restart, pg_terminate_backend) before it is used
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    raise ValueError(f"unsupported database URL {parsed.render_as_string()!r}: use sqlite:/// or postgresql://")


def read_only(engine: sa.Engine) -> sa.Connection:
    """A connection for reads only; on SQLite its transaction takes no write lock, so it never waits for writers."""
    return engine.connect().execution_options(**{_READ_ONLY: True})


def is_database_outage(exc: BaseException) -> bool:
    """True for errors that say the database cannot be reached right now (server down, connection cut, SQLite
    locked past its timeout) rather than that a statement is wrong: worth retrying later, and a 503 for the API."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def error_summary(exc: BaseException) -> str:
    """The first line of a database error's message (the full text repeats the SQL and a link), for one-line logs
    and start-up errors."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def init_db(engine: sa.Engine) -> None:
    """Bring the database to the newest schema revision (see `orfeas.store.migrate.upgrade`); safe to run at once
    from several processes, and only a read when the database is up to date."""
    from orfeas.store.migrate import upgrade  # migrate imports this module

    upgrade(engine)


def _configure_sqlite(dbapi_connection, _connection_record) -> None:
    # Let SQLAlchemy emit BEGIN (see _begin_sqlite) instead of the sqlite3 module's own deferred BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 5000")  # first, so that switching to WAL waits for other processes too
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _begin_sqlite(connection: sa.Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for the write lock (SQLite returns "database is
    # locked" at once to avoid a deadlock), so writers take the lock up front and queue on busy_timeout instead.
    if connection.get_execution_options().get(_READ_ONLY):
        connection.exec_driver_sql("BEGIN DEFERRED")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (we store UTC); PostgreSQL returns them in the session's time zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_timestamps(values: dict[str, Any]) -> dict[str, Any]:
    """The same mapping with every datetime as an ISO 8601 string (JSON-ready)."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values.items()}
