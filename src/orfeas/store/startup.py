"""Opening the job database at start-up, with one clear line instead of a traceback when it cannot be done."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from orfeas.errors import OrfeasError
from orfeas.store.db import create_db_engine, init_db


class DatabaseUnavailable(OrfeasError):
    """The configured database cannot be opened (bad URL, unreachable, refused credentials)."""


def open_database(url: str) -> sa.Engine:
    """An engine whose tables exist, or DatabaseUnavailable naming the database (password hidden) and why."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise DatabaseUnavailable(f"not a database URL: {url!r}") from None
    try:
        engine = create_db_engine(url)
        init_db(engine)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(f"cannot open the database {shown}: {reason}") from None
    return engine
