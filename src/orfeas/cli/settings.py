"""The settings and the job database a command works on: ORFEAS_* from the environment, with the command's options
(--data-dir, --database, ...) on top."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape

from orfeas.cli.console import fail, stderr
from orfeas.config import Settings
from orfeas.errors import OrfeasError
from orfeas.service.wiring import database_url, open_job_database

DataDirOption = Annotated[
    Path | None, typer.Option(help="Data folder of the server.", metavar="DIR", show_default="./orfeas-data")
]
DatabaseOption = Annotated[
    str | None, typer.Option(help="Database URL.", metavar="URL", show_default="SQLite in the data folder")
]


def command_settings(data_dir: Path | None = None, database: str | None = None, **fixed: Any) -> Settings:
    """Settings with the options given on the command line: a --data-dir or --database left out keeps the
    environment's (or the default), `fixed` (host, device...) always applies."""
    given = {"data_dir": data_dir, "database_url": database}
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value}
    return Settings(**fixed, **overrides)


def command_database_url(settings: Settings) -> str:
    """The job database's URL; for the SQLite file a missing data folder is created first, with a warning."""
    if not settings.database_url:
        ensure_data_dir(settings.data_dir)
    return database_url(settings)


def open_engine(settings: Settings) -> sa.Engine:
    """The job database these settings name, migrated; one line and exit 2 when it cannot be opened."""
    if not settings.database_url:
        ensure_data_dir(settings.data_dir)
    try:
        return open_job_database(settings)
    except OrfeasError as exc:
        raise fail(str(exc), code=2) from None


def ensure_data_dir(data_dir: Path) -> None:
    """Create the data folder, saying so: a new folder means a new, empty database, not the server's."""
    if data_dir.is_dir():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr.print(
        f"[yellow]warning:[/yellow] created {escape(str(data_dir.resolve()))} with a new database; "
        "pass --data-dir (or --database) to use a server's"
    )


def shown_url(url: str) -> str:
    """A database URL fit to print: the password hidden, and no echo of text that is not a URL."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(not a database URL)"
