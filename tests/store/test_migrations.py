"""Schema migrations on real SQLite files and, where one is reachable, a real PostgreSQL server.

The "pre-migration" databases come from fixtures/pre_migration_*.sql, written by fixtures/make_pre_migration.py with
the code from before Alembic (its `init_db` was `metadata.create_all`), so these tests upgrade what that code made.
"""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from orfeas.cli import app
from orfeas.service.agents import admit
from orfeas.store.agents import AgentStore
from orfeas.store.db import as_utc, create_db_engine, sqlite_url
from orfeas.store.jobs import JobStore, NewJob
from orfeas.store.migrate import alembic_config, autogenerate_diff, current_revision, head_revision, init_db, upgrade
from orfeas.store.opening import DatabaseUnavailable, open_database
from orfeas.store.schema import agent_audit, agent_requests, agents, job_events, jobs

FIXTURES = Path(__file__).with_name("fixtures")
TABLES = (jobs, job_events, agents, agent_requests, agent_audit)  # foreign keys point backwards in this order

# SQLite cannot reflect the expression index uq_jobs_idempotency, so Alembic skips it there (and says so);
# test_the_baseline_is_exactly_the_pre_migration_schema_on_sqlite compares its DDL text instead.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*expression-based index:UserWarning", "ignore:Skipped unsupported reflection:sqlalchemy.exc.SAWarning"
)


def load_pre_migration_sqlite(path: Path) -> None:
    """A SQLite file as the pre-migration code left it: its schema and its rows, no alembic_version."""
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "pre_migration_sqlite.sql").read_text())
    conn.close()


def make_pre_migration_database(url: str, tmp_path: Path) -> None:
    """The pre-migration schema and rows at `url`: the SQLite dump as is, or on PostgreSQL the DDL that
    create_all emitted there, filled with the dump's rows."""
    engine = create_db_engine(url)
    if engine.dialect.name == "sqlite":
        engine.dispose()
        load_pre_migration_sqlite(Path(engine.url.database))
        return
    source_path = tmp_path / "source.db"
    load_pre_migration_sqlite(source_path)
    source = create_db_engine(f"sqlite:///{source_path}")
    with source.connect() as src, engine.begin() as dst:
        dst.exec_driver_sql((FIXTURES / "pre_migration_postgresql.sql").read_text())
        for table in TABLES:
            rows = [_aware(dict(row)) for row in src.execute(select_present(src, table)).mappings()]
            # the table as the old schema made it, so no default of a newer column is sent
            dst.execute(sa.Table(table.name, sa.MetaData(), autoload_with=dst).insert(), rows)
        for table in (job_events, agent_requests, agent_audit):  # serial ids continue after the copied ones
            dst.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), max(id)) FROM {table}")
    source.dispose()
    engine.dispose()


def select_present(conn: sa.Connection, table: sa.Table) -> sa.Select:
    """All rows of `table`, in primary-key order, with only the columns the database has (an older schema lacks
    the newer ones)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
    return sa.select(*[c for c in table.c if c.name in present]).order_by(*table.primary_key.columns)


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    return {key: as_utc(value) if isinstance(value, datetime) else value for key, value in row.items()}


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (the columns the database has), in primary-key order, timestamps as aware UTC."""
    engine = create_db_engine(url)
    with engine.connect() as conn:
        rows = {
            table.name: [_aware(dict(row)) for row in conn.execute(select_present(conn, table)).mappings()]
            for table in TABLES
        }
    engine.dispose()
    return rows


def test_an_empty_database_is_upgraded_to_the_newest_revision(db_url):
    engine = create_db_engine(db_url)
    assert current_revision(engine) is None
    assert upgrade(engine) == (None, head_revision())
    assert current_revision(engine) == head_revision()
    assert autogenerate_diff(engine) == []
    assert upgrade(engine) == (head_revision(), head_revision())
    engine.dispose()


def test_the_baseline_is_exactly_the_pre_migration_schema_on_sqlite(tmp_path):
    def schema(path: Path) -> set[str]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'alembic_version'")
            statements = {re.sub(r"\s+", " ", sql) for (sql,) in rows}
        conn.close()
        return statements

    old = tmp_path / "old"
    old.mkdir()
    load_pre_migration_sqlite(old / "orfeas.db")
    engine = create_db_engine(sqlite_url(tmp_path))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    assert len(schema(old / "orfeas.db")) == 16  # 5 tables, 11 indexes
    assert schema(tmp_path / "orfeas.db") == schema(old / "orfeas.db")


def test_a_pre_migration_database_is_upgraded_in_place_and_keeps_its_rows(db_url, tmp_path):
    make_pre_migration_database(db_url, tmp_path)
    before = snapshot(db_url)
    assert [len(before[t.name]) for t in TABLES] == [6, 13, 2, 2, 2]

    engine = open_database(db_url)  # the start-up path of `orfeas serve` and `orfeas worker`
    assert current_revision(engine) == head_revision()
    assert autogenerate_diff(engine) == []
    after = snapshot(db_url)
    # Revision 0002 gives every job an owner: an agent's id becomes "agent:<id>", the public API's jobs "user:local".
    assert [job["owner"] for job in after["jobs"]] == ["agent:alice"] * 3 + ["user:local"] * 3
    for job in before["jobs"]:
        job["owner"] = f"agent:{job['owner']}" if job["owner"] else "user:local"
        # Revision 0003: no batch size or limit yet, no crashes charged.
        job |= {"batch_size": None, "batch_limit": None, "solo_crashes": 0}
    # Revision 0005: each agent's running count starts from all its request rows, the oldest first.
    for agent in before["agents"]:
        mine = [row["at"] for row in before["agent_requests"] if row["agent_id"] == agent["id"]]
        agent |= {"window_count": len(mine), "window_tail": min(mine, default=None)}
    assert sorted(agent["window_count"] for agent in before["agents"]) == [0, 2]  # the fixture's two requests
    assert after == before

    store = JobStore(engine)
    done = store.get("00000000000000000000000000000002")
    assert (done.status, done.progress, done.owner, done.idempotency_key) == ("succeeded", 100, "agent:alice", "req-1")
    assert done.result == {"files": {"glb": "model.glb"}, "faces": 1200}
    assert done.finished_at == datetime(2026, 3, 1, 9, 0, 1, 250000, tzinfo=UTC)
    failed = store.get("00000000000000000000000000000003")
    assert (failed.status, failed.error, failed.profile) == ("failed", "out of memory", {"total_s": 0.2})
    assert store.get("00000000000000000000000000000006").cancel_requested
    assert [e["status"] for e in store.events("00000000000000000000000000000002")] == ["queued", "running", "succeeded"]
    # The old rows keep working: the dead worker's leases expire, an old idempotency key still deduplicates.
    assert sorted(store.requeue_expired()[0]) == [
        "00000000000000000000000000000001",
        "00000000000000000000000000000004",
    ]
    again, created = store.create_jobs(
        [NewJob(id="f" * 32, options={}, batch_key="b", input_name="x.png")],
        idempotency_key="req-1",
        owner="agent:alice",
    )
    assert not created and again[0].id == "00000000000000000000000000000001"

    registry = AgentStore(engine, now=lambda: datetime(2026, 3, 1, 9, 0, 10, tzinfo=UTC))  # fixture time
    robot = registry.get_by_name("robot")
    assert (robot.operations, robot.rate_per_minute, robot.active) == (("generate", "status"), 30, True)
    assert not registry.get_by_name("other").active
    assert admit(registry, robot.id, "nonce-1").reason == "replay"  # the nonce recorded before the upgrade
    assert [row["outcome"] for row in registry.audit_log("robot")] == [202]
    engine.dispose()


def test_a_database_from_before_the_agent_api_gets_the_agent_tables(tmp_path):
    path = tmp_path / "orfeas.db"
    load_pre_migration_sqlite(path)
    with sqlite3.connect(path) as conn:
        conn.executescript("DROP TABLE agent_audit; DROP TABLE agent_requests; DROP TABLE agents;")
    conn.close()
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    assert autogenerate_diff(engine) == []
    assert JobStore(engine).list_jobs(limit=10)[1] == 6
    engine.dispose()


def upgrade_in_process(url: str, start, results) -> None:
    start.wait()
    try:
        open_database(url).dispose()
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(repr(exc))


def test_processes_starting_together_upgrade_the_database_once(db_url):
    context = multiprocessing.get_context("fork")  # fast to start, so the four really race; each opens its own engine
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=upgrade_in_process, args=(db_url, start, results)) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    assert outcomes == ["ok"] * 4
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head_revision()]
    assert autogenerate_diff(engine) == []
    engine.dispose()


def test_an_up_to_date_database_is_only_read(db_url):
    engine = create_db_engine(db_url)
    init_db(engine)
    # Someone holds the lock an upgrade would take; start-up must not wait for it.
    blocker = create_db_engine(db_url)
    conn = blocker.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("SELECT 1")  # our SQLite engine begins with BEGIN IMMEDIATE: the write lock
    else:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key()})
    second = create_db_engine(db_url)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (init_db(second), done.set()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=20)
    conn.rollback()
    conn.close()
    thread.join(timeout=20)
    assert done.is_set() and time.monotonic() - started < 4.0  # SQLite's busy timeout is 5 s
    for each in (engine, blocker, second):
        each.dispose()


def _lock_key() -> int:
    from orfeas.store import migrate

    return migrate._ADVISORY_LOCK_KEY


def test_a_database_migrated_by_a_newer_version_is_refused_with_one_line(db_url):
    engine = create_db_engine(db_url)
    init_db(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(DatabaseUnavailable, match=r"revision '9999'.*newer version"):
        open_database(db_url)


def test_the_db_commands_upgrade_and_report_the_revision(tmp_path):
    load_pre_migration_sqlite(tmp_path / "orfeas.db")
    runner = CliRunner()
    current = runner.invoke(app, ["db", "current", "--data-dir", str(tmp_path)])
    assert current.exit_code == 0 and current.stdout.split() == ["current:", "none", "head:", head_revision()]
    upgraded = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"upgraded from no revision to {head_revision()}" in upgraded.stdout
    again = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert f"already at revision {head_revision()}" in again.stdout
    assert snapshot(sqlite_url(tmp_path))["jobs"][0]["input_name"] == "photo 1.png"
    refused = runner.invoke(app, ["db", "upgrade", "--database", "postgresql://nobody@127.0.0.1:1/none"])
    assert refused.exit_code == 2 and "cannot open the database" in refused.output
