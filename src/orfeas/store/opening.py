"""Opening the job database at start-up, with one clear line instead of a traceback when it cannot be done."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from orfeas.errors import OrfeasError
from orfeas.store.db import create_db_engine, error_summary
from orfeas.store.migrate import upgrade


class DatabaseUnavailable(OrfeasError):
    """The configured database cannot be opened (bad URL, unreachable, refused credentials, unknown schema)."""


def open_database(url: str, application_name: str | None = None) -> sa.Engine:
    """An engine whose schema is at the newest revision, or DatabaseUnavailable naming the database and why.

    `application_name` labels the PostgreSQL connections (see `create_db_engine`).
    """
    return upgrade_database(url, application_name)[0]


def upgrade_database(url: str, application_name: str | None = None) -> tuple[sa.Engine, str | None, str]:
    """Open the database and migrate it (see `orfeas.store.migrate.upgrade`): (engine, revision before, newest).

    Raises DatabaseUnavailable naming the database (password hidden) and the first line of the reason.
    """
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise DatabaseUnavailable(f"not a database URL: {url!r}") from None
    try:
        engine = create_db_engine(url, application_name)
        before, head = upgrade(engine)
    except (SQLAlchemyError, CommandError, ValueError, ImportError) as exc:
        raise DatabaseUnavailable(f"cannot open the database {shown}: {error_summary(exc)}") from None
    return engine, before, head
