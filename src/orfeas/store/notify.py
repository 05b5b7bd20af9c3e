"""Job-change notifications: on PostgreSQL, the ids migration 0004's trigger sends on `orfeas_jobs` whenever a job's
status, progress, stage or error changes; SQLite has none (the progress hub polls there)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import sqlalchemy as sa

CHANNEL = "orfeas_jobs"

JobChanges = Callable[[], AsyncIterator[str | None]]


def job_changes_for(engine: sa.Engine) -> JobChanges | None:
    """A source of job-change notifications for the engine's database, or None where it has none (SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

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
