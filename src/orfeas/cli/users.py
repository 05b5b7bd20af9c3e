"""`orfeas users` and `orfeas keys`: the people who may use the studio and the API, and their API keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orfeas.cli.console import fail, print_rows, stderr
from orfeas.cli.help import CleanHelpTyper
from orfeas.cli.settings import DatabaseOption, DataDirOption, command_settings, open_engine
from orfeas.errors import OrfeasError
from orfeas.service.auth import AccountService
from orfeas.service.wiring import account_service

users_app = CleanHelpTyper(help="Manage the users of the studio and the API (operator commands).", no_args_is_help=True)
keys_app = CleanHelpTyper(help="Manage users' API keys for programs (operator commands).", no_args_is_help=True)

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input.")
]


def _accounts(data_dir: Path | None, database: str | None) -> AccountService:
    settings = command_settings(data_dir, database)
    engine = open_engine(settings)
    stderr.print(f"database: {engine.url.render_as_string(hide_password=True)}")
    return account_service(settings, engine)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise fail("no terminal to ask for the password: pass --password-stdin and pipe it in", code=2)
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="Unique user name (letters, digits, '_', '.', '-').")],
    admin: Annotated[bool, typer.Option("--admin", help="May see and cancel every job.")] = False,
    no_password: Annotated[bool, typer.Option("--no-password", help="API keys only; no studio sign-in.")] = False,
    password_stdin: PasswordStdin = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Add a user; asks for the password (or reads it with --password-stdin)."""
    accounts = _accounts(data_dir, database)
    password = None if no_password else _read_password(password_stdin)
    try:
        user = accounts.create_user(name, password, is_admin=admin)
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    print(f"created {'admin' if user.is_admin else 'user'} {user.name}")


@users_app.command("list")
def users_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """List users (never their passwords)."""
    users = _accounts(data_dir, database).list_users()
    rows = [
        {
            "name": user.name,
            "admin": user.is_admin,
            "password": user.has_password,
            "status": "active" if user.active else "disabled",
            "created (UTC)": user.created_at.strftime("%Y-%m-%d %H:%M"),
        }
        for user in users
    ]
    print_rows(rows, ("name", "admin", "password", "status", "created (UTC)"), as_json)


@users_app.command("passwd")
def users_passwd(
    name: str, password_stdin: PasswordStdin = False, data_dir: DataDirOption = None, database: DatabaseOption = None
) -> None:
    """Set a user's password (their open sessions stay signed in)."""
    accounts = _accounts(data_dir, database)
    try:
        accounts.set_password(name, _read_password(password_stdin))
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    print(f"password of {name} changed")


@users_app.command("disable")
def users_disable(name: str, data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Refuse the user's password, sessions and API keys from now on; their jobs stay."""
    try:
        _accounts(data_dir, database).disable_user(name)
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    print(f"disabled {name}")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="Whose key it is.", show_default=False)],
    label: Annotated[str, typer.Option(help="What the key is for (shown in listings).")] = "",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Make an API key and print it (shown once: store it now). Send it as 'Authorization: Bearer <key>'."""
    try:
        record, key = _accounts(data_dir, database).create_key(user, label)
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    print(f"key: {key}")
    stderr.print(f"key id {record.id} for {record.user_name}" + (f" ({record.label})" if record.label else ""))


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """List API keys by id (never the keys themselves)."""
    try:
        keys = _accounts(data_dir, database).list_keys(user)
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    rows = [
        {
            "id": key.id,
            "user": key.user_name,
            "label": key.label,
            "status": "revoked" if key.revoked_at else "active",
            "created (UTC)": key.created_at.strftime("%Y-%m-%d %H:%M"),
        }
        for key in keys
    ]
    print_rows(rows, ("id", "user", "label", "status", "created (UTC)"), as_json)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `orfeas keys list`) or the key itself.")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Refuse a key from now on."""
    try:
        record = _accounts(data_dir, database).revoke_key(key_id)
    except OrfeasError as exc:
        raise fail(str(exc)) from None
    print(f"revoked key {record.id} of {record.user_name}")
