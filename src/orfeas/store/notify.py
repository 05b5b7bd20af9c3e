"""Notifications from the database, so that waiters need not poll it:

- job changes (`job_changes_for`): on PostgreSQL, the ids migration 0004's trigger sends on `orfeas_jobs` whenever a
  job's status, progress, stage or error changes; SQLite has none (the progress hub polls there);
- the queue (`queue_watch_for`): an idle worker waits on a `QueueWatch`, which returns as soon as jobs may have been
  queued by another process: on PostgreSQL migration 0006's trigger notifies `orfeas_queue`, on a SQLite file the
  watch asks SQLite whether another connection committed (`PRAGMA data_version`, which reads no table) and, when
  one did, whether a job waits.

Either is a hint that ends a wait early; the worker still checks the queue every `poll_seconds`, so a lost
notification delays a job, it never loses one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

CHANNEL = "orfeas_jobs"
QUEUE_CHANNEL = "orfeas_queue"
SQLITE_CHECK_SECONDS = 0.02  # how often an idle worker on SQLite asks whether another connection committed
LISTEN_CHECK_SECONDS = 0.1  # how often a worker listening on PostgreSQL looks up from the socket (to be woken)
RELISTEN_SECONDS = 5.0  # after a failed LISTEN connection, plain waits this long before connecting again

JobChanges = Callable[[], AsyncIterator[str | None]]


def _conninfo(engine: sa.Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def job_changes_for(engine: sa.Engine) -> JobChanges | None:
    """A source of job-change notifications for the engine's database, or None where it has none (SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    conninfo = _conninfo(engine)

    def changes() -> AsyncIterator[str | None]:
        return _listen(conninfo)

    return changes


async def _listen(conninfo: str) -> AsyncIterator[str | None]:
    """None once listening (anything may have changed before), then each changed job's id; runs until the
    connection fails (the error propagates) or the consumer stops."""
    import psycopg  # the postgres extra: only a PostgreSQL deployment gets here

    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        yield None
        async for note in conn.notifies():
            yield note.payload


class QueueWatch(Protocol):
    """What an idle worker waits on between its queue checks."""

    def wait(self, timeout: float, interrupt: threading.Event) -> bool:
        """Block until jobs may have been queued (True), `interrupt` is set or `timeout` seconds pass (False)."""
        ...

    def close(self) -> None: ...


def queue_watch_for(engine: sa.Engine, waiting: sa.Select[Any]) -> QueueWatch:
    """The engine's way of hearing new jobs: LISTEN on PostgreSQL, commit counts on a SQLite file, else none.
    `waiting` selects a row when a job waits to be claimed (SQLite's watch asks it after another connection's
    commit, so that the API's other writes do not wake the worker)."""
    if engine.dialect.name == "postgresql":
        return PostgresQueueWatch(_conninfo(engine))
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        query = str(waiting.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        return SqliteQueueWatch(database, query)
    return PlainWait()


class PlainWait:
    """No notifications: the wait lasts until it is interrupted or times out."""

    def wait(self, timeout: float, interrupt: threading.Event) -> bool:
        interrupt.wait(timeout)
        return False

    def close(self) -> None:
        pass


class SqliteQueueWatch:
    """Watches a SQLite file for commits made by other connections, and after each asks `waiting` (a query that
    returns a row when a job waits to be claimed) on its own connection.

    `PRAGMA data_version` changes on this connection whenever another connection, of this process or another,
    commits; reading it reads no table and never blocks a writer, so an idle worker can ask every
    SQLITE_CHECK_SECONDS (docs/BENCHMARKS.md has its cost). The connection is opened on first use.
    """

    def __init__(self, path: str, waiting: str) -> None:
        self._path = path
        self._waiting = waiting
        self._connection: sqlite3.Connection | None = None

    def wait(self, timeout: float, interrupt: threading.Event) -> bool:
        deadline = time.monotonic() + timeout
        try:
            seen = self._data_version()
            while (left := deadline - time.monotonic()) > 0:
                if interrupt.wait(min(SQLITE_CHECK_SECONDS, left)):
                    return False
                version = self._data_version()
                if version != seen:
                    seen = version
                    if self._open().execute(self._waiting).fetchone() is not None:
                        return True
        except sqlite3.Error as exc:  # the worker's own queue check reports what is wrong with the database
            logger.debug("queue watch: %s", exc)
            self.close()
            interrupt.wait(max(0.0, deadline - time.monotonic()))
        return False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _data_version(self) -> int:
        return int(self._open().execute("PRAGMA data_version").fetchone()[0])

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(self._path, check_same_thread=False)
        return self._connection


class PostgresQueueWatch:
    """LISTENs on QUEUE_CHANNEL on a connection of its own, opened on first use and again (after
    RELISTEN_SECONDS of plain waiting) when it fails; notifications that arrive while the worker is busy end its next
    wait at once, which costs one queue check."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._connection: psycopg.Connection | None = None
        self._next_attempt = 0.0

    def wait(self, timeout: float, interrupt: threading.Event) -> bool:
        import psycopg  # the postgres extra: only a PostgreSQL deployment gets here

        deadline = time.monotonic() + timeout
        try:
            connection = self._listening()
            while connection is not None and (left := deadline - time.monotonic()) > 0:
                if list(connection.notifies(timeout=min(LISTEN_CHECK_SECONDS, left), stop_after=1)):
                    return True
                if interrupt.is_set():
                    return False
        except psycopg.Error as exc:
            logger.warning("queue notifications unavailable, polling: %s", str(exc).strip().splitlines()[0])
            self.close()
            self._next_attempt = time.monotonic() + RELISTEN_SECONDS
        interrupt.wait(max(0.0, deadline - time.monotonic()))
        return False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _listening(self) -> psycopg.Connection | None:
        """The listening connection; None while a failed one waits out RELISTEN_SECONDS."""
        import psycopg

        if self._connection is None or self._connection.closed:
            if time.monotonic() < self._next_attempt:
                return None
            self._connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            self._connection.execute(f"LISTEN {QUEUE_CHANNEL}")
        return self._connection
