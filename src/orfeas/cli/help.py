"""How `orfeas ... --help` shows parameters: placeholders people read (IMAGE, DIR, N), not Python types.

Typer fills the help's type column with annotations (`<list[Path]>`, `<bool>` beside every flag). Our commands use
`CleanHelpTyper`, whose commands show an option's metavar there (or its type's name in capitals), nothing beside
arguments (their name column already shows the metavar) and nothing beside flags.
"""

from __future__ import annotations

import functools
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption


# `ctx` and the parameter lists are typer's own copy of click's types (typer._click, a private module): Any here.
def _placeholder(param: TyperArgument | TyperOption, ctx: Any) -> str:
    if isinstance(param, TyperArgument) or param.is_flag:
        return ""
    return param.metavar or param.display_type(ctx).strip("<>").upper()


class CleanHelpCommand(TyperCommand):
    """A command whose help shows placeholders instead of Python types."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument | TyperOption):
                # an instance attribute: it shadows the method that typer's rich help calls, for this parameter only
                vars(param)["display_type_rich"] = functools.partial(_placeholder, param)
        return params


class CleanHelpTyper(typer.Typer):
    """A Typer app whose commands are `CleanHelpCommand`s unless told otherwise."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or CleanHelpCommand, **kwargs)
