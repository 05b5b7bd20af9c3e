"""The connection helpers of `orfeas.store.db` against real SQLite files and, where one is reachable, a real
PostgreSQL server: single reads that skip SQLAlchemy's per-call machinery give the same values, and writes that
must not wait raise WriteBusy instead."""

import sqlite3
import threading
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from orfeas.store.db import NoWaitWrites, SingleReads, WriteBusy
from orfeas.store.jobs import JobStore, NewJob
from orfeas.store.schema import jobs

BY_ID = sa.select(jobs).where(jobs.c.id == sa.bindparam("job_id"))
BY_STATUS_SINCE = sa.select(jobs.c.id, jobs.c.created_at).where(
    jobs.c.status == sa.bindparam("status"), jobs.c.created_at >= sa.bindparam("since")
)


def test_a_single_read_gives_what_execute_gives(engine: sa.Engine) -> None:
    store = JobStore(engine)
    job_id = uuid.uuid4().hex
    store.create_jobs([NewJob(job_id, {"formats": ["glb"], "faces": 2000}, "key", "chair.png")], owner="user:a")
    with engine.connect() as conn:
        expected = dict(conn.execute(BY_ID, {"job_id": job_id}).one()._mapping)
    reads = SingleReads(engine)

    for _ in range(2):  # prepared on the first call, reused on the second
        assert reads.first(BY_ID, {"job_id": job_id}) == expected
    assert reads.first(BY_ID, {"job_id": "0" * 32}) is None
    assert isinstance(expected["options"], dict) and expected["created_at"] is not None
    # a datetime bind parameter goes through the dialect's processor, as with execute
    since = datetime(2000, 1, 1, tzinfo=UTC)
    assert reads.first(BY_STATUS_SINCE, {"status": "queued", "since": since})["id"] == job_id


def test_a_single_read_sees_writes_of_other_connections(engine: sa.Engine) -> None:
    """The connection a thread keeps for its reads opens no transaction, so it never reads an old snapshot."""
    store = JobStore(engine)
    job_id = uuid.uuid4().hex
    store.create_jobs([NewJob(job_id, {}, "key", "chair.png")], owner="user:a")
    assert store.get(job_id).progress == 0
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(progress=40))
    assert store.get(job_id).progress == 40


@pytest.fixture
def sqlite_engine(engine: sa.Engine) -> sa.Engine:
    if engine.dialect.name != "sqlite":
        pytest.skip("writes that never wait exist for SQLite only")
    return engine


def test_no_wait_writes_are_for_sqlite_only(engine: sa.Engine) -> None:
    assert (NoWaitWrites.for_engine(engine) is not None) == (engine.dialect.name == "sqlite")


def test_a_no_wait_write_commits_when_the_lock_is_free(sqlite_engine: sa.Engine) -> None:
    JobStore(sqlite_engine).create_jobs([NewJob("a" * 32, {}, "key", "x.png")], owner="user:a")
    writes = NoWaitWrites(sqlite_engine)
    for progress in (10, 20):  # the kept connection is reused
        with writes.begin() as conn:
            conn.execute(sa.update(jobs).values(progress=progress))
    assert JobStore(sqlite_engine).get("a" * 32).progress == 20


def test_a_no_wait_write_refuses_while_this_process_writes(sqlite_engine: sa.Engine) -> None:
    writes = NoWaitWrites(sqlite_engine)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sqlite_engine.begin():
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=hold)
    writer.start()
    holding.wait(10)
    try:
        with pytest.raises(WriteBusy, match="another thread"), writes.begin():
            pass
    finally:
        release.set()
        writer.join()
    with writes.begin() as conn:  # free again, and the failed attempt left no lock behind
        conn.execute(sa.select(1))


def test_a_no_wait_write_refuses_while_another_process_writes(sqlite_engine: sa.Engine) -> None:
    other = sqlite3.connect(sqlite_engine.url.database, isolation_level=None)  # as another process would
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(WriteBusy, match="another process"), NoWaitWrites(sqlite_engine).begin():
            pass
        other.execute("ROLLBACK")
        with sqlite_engine.begin() as conn:  # this process's writer lock was released too
            conn.execute(sa.select(1))
    finally:
        other.close()


def test_a_driver_error_comes_back_as_sqlalchemys(engine: sa.Engine) -> None:
    """A failing statement raises what `Connection.execute` would (an OperationalError is what the API answers
    503 for), on SQLite's driver-level path as on PostgreSQL."""
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE job_events"))
        conn.execute(sa.text("DROP TABLE jobs"))
    with pytest.raises(sa.exc.DBAPIError) as raised:
        SingleReads(engine).first(BY_ID, {"job_id": "0" * 32})
    assert "jobs" in str(raised.value.orig)
    if engine.dialect.name == "sqlite":
        assert isinstance(raised.value, sa.exc.OperationalError)
