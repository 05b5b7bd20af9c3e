"""Where the `orfeas` commands write: results on stdout, progress and one-line errors on stderr."""

from __future__ import annotations

import typer
from rich.console import Console

stderr = Console(stderr=True, soft_wrap=True)  # one error, one line: no wrapping


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one error line and return the exit to raise: `raise fail("...", code=2) from None`.

    The message is rich markup; escape file names and other text from outside.
    """
    stderr.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
