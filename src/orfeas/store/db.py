"""Database engines and connections (SQLite by default, PostgreSQL for several hosts) and time helpers.

The tables live in `store/schema.py`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

import sqlalchemy as sa

# Execution option that marks a connection as read-only; see `read_only` and `_begin_sqlite`.
_READ_ONLY = "orfeas_read_only"
_SINGLE_READ = "orfeas_single_read"
_WRITE_LOCK = "orfeas_write_lock"
_NO_WAIT = "orfeas_no_wait"
_BUSY = "orfeas_busy"


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
        # A pool as large as the API's thread pool: connections past pool_size are closed after each use, and
        # reopening one (file open, PRAGMAs) costs more than the read it serves.
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False}, pool_size=40, max_overflow=40)
        sa.event.listen(engine, "connect", _configure_sqlite)
        writers = threading.Lock()
        sa.event.listen(engine, "begin", lambda connection: _begin_sqlite(connection, writers))
        sa.event.listen(engine, "commit", _end_sqlite_write)
        sa.event.listen(engine, "rollback", _end_sqlite_write)
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


def is_disk_full(exc: BaseException) -> bool:
    """True when the database could not write for lack of space (SQLite's SQLITE_FULL, PostgreSQL's 53100)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "53100" or getattr(orig, "pgcode", None) == "53100":
        return True
    return "database or disk is full" in str(orig or exc)


def error_summary(exc: BaseException) -> str:
    """The first line of a database error's message (the full text repeats the SQL and a link), for one-line logs
    and start-up errors."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _connection_record: object) -> None:
    # Let SQLAlchemy emit BEGIN (see _begin_sqlite) instead of the sqlite3 module's own deferred BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 5000")  # first, so that switching to WAL waits for other processes too
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def single_read(engine: sa.Engine) -> sa.Connection:
    """A connection for one SELECT: a single statement is consistent by itself, so no transaction is opened
    (on SQLite no BEGIN, on PostgreSQL autocommit: no BEGIN and no ROLLBACK round trip)."""
    connection = engine.connect()
    if engine.dialect.name == "sqlite":
        return connection.execution_options(**{_SINGLE_READ: True})
    return connection.execution_options(isolation_level="AUTOCOMMIT")


class WriteBusy(Exception):
    """`NoWaitWrites` found the database's write lock taken: try again where waiting for it is allowed."""


class NoWaitWrites:
    """Write transactions that never wait for SQLite's write lock, for a caller that must not block (the event
    loop): the thread's own connection has a busy timeout of 0 and leaves checkpoints to other connections, and the
    process's writer lock is only tried, so a transaction either starts at once or raises WriteBusy. None for
    PostgreSQL (`for_engine`), whose writes are round trips to another host."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._kept = threading.local()

    @classmethod
    def for_engine(cls, engine: sa.Engine) -> NoWaitWrites | None:
        return cls(engine) if engine.dialect.name == "sqlite" else None

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A write transaction, committed when the block ends normally; raises WriteBusy before it starts if
        another writer holds the lock."""
        kept = _kept_connection(self._kept, self._connect)
        transaction = kept.begin()  # takes this process's writer lock if it is free, and emits nothing
        if kept.info.pop(_BUSY, False):
            transaction.rollback()
            raise WriteBusy("another thread of this process is writing")
        try:
            kept.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError as exc:
            transaction.rollback()  # releases the writer lock
            if "database is locked" in str(exc.orig):
                raise WriteBusy("another process is writing") from exc
            raise
        with transaction:
            yield kept

    def _connect(self) -> sa.Connection:
        connection = self._engine.connect().execution_options(**{_NO_WAIT: True})
        driver = connection.connection.driver_connection
        driver.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
        # its commits never checkpoint the log (an fsync); the other connections' commits do
        driver.execute("PRAGMA wal_autocheckpoint = 0")  # type: ignore[union-attr]
        return connection


def _kept_connection(kept: threading.local, connect: Callable[[], sa.Connection]) -> sa.Connection:
    """This thread's connection in `kept`, opened with `connect` the first time and again once it is closed or was
    invalidated (the database went away)."""
    connection: sa.Connection | None = getattr(kept, "connection", None)
    if connection is None or connection.closed or connection.invalidated:
        connection = kept.connection = connect()
    return connection


class FixedStatements:
    """Runs statements built once (their values as bind parameters) on connections of one engine. On SQLite each is
    compiled once and run on the driver's connection, inside whatever transaction the SQLAlchemy connection holds,
    its values converted by SQLAlchemy's own type processors: the same values as `Connection.execute`, without its
    per-call machinery, which costs more than a statement on a local file (the hot reads of status polling, the
    admission of signed requests). Elsewhere (PostgreSQL: a round trip anyway) through `Connection.execute`."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self._dialect = dialect
        self.compiled_here = dialect.name == "sqlite"
        self._prepared: dict[sa.Executable, _Prepared] = {}

    def rows(self, conn: sa.Connection, statement: sa.Executable, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row the statement returns (none for DML without RETURNING), as column -> value dicts."""
        if not self.compiled_here:
            result = conn.execute(statement, params)
            return [dict(row._mapping) for row in result] if result.returns_rows else []
        prepared = self._prepared.get(statement) or self._prepare(statement)
        values = []
        for name, convert, fixed in prepared.binds:
            value = params[name] if fixed is _REQUIRED else fixed  # a fixed value: a LIMIT's, say
            values.append(convert(value) if convert else value)
        driver_error = self._dialect.loaded_dbapi.Error
        try:
            cursor = conn.connection.driver_connection.execute(prepared.sql, values)  # type: ignore[union-attr]
            found = cursor.fetchall()
        except driver_error as exc:  # wrapped as SQLAlchemy wraps it, so an outage is still an OperationalError
            raise sa.exc.DBAPIError.instance(prepared.sql, values, exc, driver_error, dialect=self._dialect) from exc
        return [_converted(prepared.columns, row) for row in found]

    def first(self, conn: sa.Connection, statement: sa.Executable, params: dict[str, Any]) -> dict[str, Any] | None:
        """The statement's first row as a column -> value dict, or None."""
        found = self.rows(conn, statement, params)
        return found[0] if found else None

    def _prepare(self, statement: sa.Executable) -> _Prepared:
        dialect = self._dialect
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            fixed = _REQUIRED if bind.required or bind.callable else bind.effective_value
            binds.append((name, bind.type.dialect_impl(dialect).bind_processor(dialect), fixed))
        if isinstance(statement, sa.Select):
            described = [(column.name, column.type) for column in statement.selected_columns]
        else:  # DML: what its RETURNING names, if anything
            described = [(d["name"], d["type"]) for d in getattr(statement, "returning_column_descriptions", [])]
        columns = [(name, kind.dialect_impl(dialect).result_processor(dialect, None)) for name, kind in described]
        prepared = self._prepared[statement] = _Prepared(str(compiled), binds, columns)
        return prepared


def _converted(columns: Sequence[tuple[str, Callable[..., Any] | None]], row: Sequence[Any]) -> dict[str, Any]:
    return {name: convert(value) if convert else value for (name, convert), value in zip(columns, row, strict=True)}


@dataclass(frozen=True)
class _Prepared:
    """A statement compiled for SQLite: its SQL, its bind parameters in order and its columns, each with the
    processor (or None) that converts the value to or from what the driver takes and returns."""

    sql: str
    binds: Sequence[tuple[str, Callable[..., Any] | None, Any]]  # the value given when not _REQUIRED
    columns: Sequence[tuple[str, Callable[..., Any] | None]]


_REQUIRED = object()  # a bind parameter whose value each call gives


class SingleReads:
    """Connections for one SELECT each (see `single_read`). On SQLite every thread keeps its own open, instead of
    taking one from the pool for each read and handing it back: for a primary-key read of a local file the
    checkout, its events and the return cost more than the read itself. On PostgreSQL each read takes one from the
    pool as usual (a connection held per thread would be a server process held per thread).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._kept = threading.local() if engine.dialect.name == "sqlite" else None
        self._statements = FixedStatements(engine.dialect)

    @contextmanager
    def __call__(self) -> Iterator[sa.Connection]:
        if self._kept is None:
            with single_read(self._engine) as pooled:
                yield pooled
            return
        yield self._connection()

    def first(self, statement: sa.Select[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of a fixed statement (built once, its values as bind parameters) as a column -> value
        dict, or None (run as `FixedStatements` runs it)."""
        with self() as conn:
            return self._statements.first(conn, statement, params)

    def _connection(self) -> sa.Connection:
        assert self._kept is not None
        return _kept_connection(self._kept, lambda: single_read(self._engine))


def _begin_sqlite(connection: sa.Connection, writers: threading.Lock) -> None:
    # A deferred transaction that reads and then writes cannot wait for the write lock (SQLite returns "database is
    # locked" at once to avoid a deadlock), so writers take the lock up front and queue on busy_timeout instead.
    # The threads of this process first queue on `writers`, which wakes the next one the moment the lock is free;
    # SQLite's own busy handler sleeps in growing steps, which under concurrent writes dominates their latency.
    options = connection.get_execution_options()
    if options.get(_SINGLE_READ):
        return  # the connection is in the sqlite3 module's autocommit mode (see _configure_sqlite)
    if options.get(_READ_ONLY):
        connection.exec_driver_sql("BEGIN DEFERRED")
        return
    if options.get(_NO_WAIT):  # NoWaitWrites.begin emits the BEGIN itself, with no busy timeout
        if writers.acquire(blocking=False):
            connection.info[_WRITE_LOCK] = writers
        else:
            connection.info[_BUSY] = True
        return
    writers.acquire()
    connection.info[_WRITE_LOCK] = writers
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        _end_sqlite_write(connection)
        raise


def _end_sqlite_write(connection: sa.Connection) -> None:
    writers = connection.info.pop(_WRITE_LOCK, None)
    if writers is not None:
        writers.release()


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
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
