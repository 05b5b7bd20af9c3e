"""Schema migrations (Alembic, configured here in code): every process upgrades the database before using it.

`upgrade` brings any database to the newest revision in `migrations/versions/`, on SQLite and PostgreSQL alike:

- an empty database gets every table;
- a database made before migrations existed (tables, no alembic_version) is taken as the baseline: the baseline
  revision adds only the tables it lacks, then the later revisions run on it in place, keeping its rows;
- a database already at the newest revision is only read.

Several processes may start at once (API servers and workers of a cluster). The upgrade runs in one transaction that
first takes a lock: `pg_advisory_xact_lock` on PostgreSQL (DDL is transactional there, so the others wait and then
find the work done), and SQLite's write lock through `BEGIN IMMEDIATE` (see `db._begin_sqlite`). Whoever gets the
lock second reads the revision again and finds nothing to do.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orfeas.errors import OrfeasError
from orfeas.store.db import read_only
from orfeas.store.schema import metadata

MIGRATIONS = Path(__file__).with_name("migrations")
# Key of the PostgreSQL advisory lock that serializes upgrades, shared by every ORFEAS process on one database.
_ADVISORY_LOCK_KEY = zlib.crc32(b"orfeas.store.migrate")


class UnknownSchemaRevision(OrfeasError, ValueError):
    """The database is at a revision this version of ORFEAS does not have (a newer version migrated it)."""


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration without an alembic.ini: the shipped scripts, run on `connection` (see env.py)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/versions/ holds no revision"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None for an empty database or one made before migrations."""
    with read_only(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the database to the newest revision; returns (the revision it was at, the newest one)."""
    head = head_revision()
    if current_revision(engine) == head:
        return head, head
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        before = MigrationContext.configure(conn).get_current_revision()  # again: another process may have done it
        if before != head:
            _check_known(before)
            command.upgrade(alembic_config(conn), "head")
    return before, head


def init_db(engine: sa.Engine) -> None:
    """Bring the database to the newest schema revision (see `upgrade`); safe to run at once from several
    processes, and only a read when the database is up to date."""
    upgrade(engine)


def autogenerate_diff(engine: sa.Engine) -> list[Any]:
    """What Alembic finds different between the database and the tables in the code (empty when they agree)."""
    with read_only(engine) as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def _check_known(revision: str | None) -> None:
    if revision is None:
        return
    scripts = ScriptDirectory.from_config(alembic_config())
    if revision not in {script.revision for script in scripts.walk_revisions()}:
        raise UnknownSchemaRevision(
            f"the database is at schema revision {revision!r}, which this version of ORFEAS does not know "
            "(a newer version upgraded it); run that version or a newer one"
        )
