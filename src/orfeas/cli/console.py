"""Where the `orfeas` commands write: results on stdout, progress and one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

stderr = Console(stderr=True, soft_wrap=True)  # one error, one line: no wrapping


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one error line and return the exit to raise: `raise fail("...", code=2) from None`.

    The message is rich markup; escape file names and other text from outside.
    """
    stderr.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    """Rows on stdout: one JSON object per line, or a table of `columns` (booleans as yes/no)."""
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(("yes" if v else "no") if isinstance(v, bool) else None if v is None else str(v) for v in row.values())
        )
    Console(file=sys.stdout).print(table)


def _cell(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return None if value is None else str(value)
