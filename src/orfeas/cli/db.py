"""`orfeas db`: the job database's schema revision, read and upgraded by the operator."""

from __future__ import annotations

from pathlib import Path

from orfeas.cli.console import fail
from orfeas.cli.help import CleanHelpTyper
from orfeas.cli.settings import DatabaseOption, DataDirOption, command_database_url, command_settings, shown_url
from orfeas.errors import OrfeasError

db_app = CleanHelpTyper(help="The job database's schema (operator commands; servers and workers upgrade at start too).")


def _database_url(data_dir: Path | None, database: str | None) -> str:
    return command_database_url(command_settings(data_dir, database))


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Bring the database to the newest schema revision (an existing one keeps its jobs and agents)."""
    from orfeas.store.opening import upgrade_database

    try:
        engine, before, head = upgrade_database(_database_url(data_dir, database))
    except OrfeasError as exc:
        raise fail(str(exc), code=2) from None
    shown = engine.url.render_as_string(hide_password=True)
    engine.dispose()
    if before == head:
        print(f"{shown}: already at revision {head}")
    else:
        print(f"{shown}: upgraded from {before or 'no revision'} to {head}")


@db_app.command("current")
def db_current(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Print the database's schema revision and the newest one this version knows; changes nothing."""
    from sqlalchemy.exc import SQLAlchemyError

    from orfeas.store.db import create_db_engine, error_summary
    from orfeas.store.migrate import current_revision, head_revision

    url = _database_url(data_dir, database)
    try:
        engine = create_db_engine(url)
        current = current_revision(engine)
    except (SQLAlchemyError, ValueError) as exc:
        raise fail(f"cannot read the database {shown_url(url)}: {error_summary(exc)}", code=2) from None
    engine.dispose()
    print(f"current: {current or 'none'}")
    print(f"head: {head_revision()}")
