"""How `orfeas ... --help` shows parameters: placeholders people read (IMAGE, DIR, N), not Python types.

Typer fills the help's type column with annotations (`<list[Path]>`, `<bool>` beside every flag). Our commands use
`CleanHelpTyper`, whose commands show an option's metavar there (or its type's name in capitals), nothing beside
arguments (their name column already shows the metavar) and nothing beside flags.
"""

from __future__ import annotations

import functools
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand


def _placeholder(param: Any, ctx: Any) -> str:
    if isinstance(param, TyperArgument) or getattr(param, "is_flag", False):
        return ""
    return param.metavar or param.display_type(ctx).strip("<>").upper()


class CleanHelpCommand(TyperCommand):
    """A command whose help shows placeholders instead of Python types."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            param.display_type_rich = functools.partial(_placeholder, param)
        return params


class CleanHelpTyper(typer.Typer):
    """A Typer app whose commands are `CleanHelpCommand`s unless told otherwise."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or CleanHelpCommand, **kwargs)
