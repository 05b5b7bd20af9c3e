"""`orfeas agents`: the operator's commands for the agents allowed to call the agent API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orfeas.cli.console import fail, stderr
from orfeas.cli.help import CleanHelpTyper
from orfeas.cli.settings import DatabaseOption, DataDirOption, command_settings, open_engine, shown_url
from orfeas.errors import OrfeasError
from orfeas.service.agent_accounts import AgentAccounts
from orfeas.service.agent_keys import MASTER_KEY_FILE
from orfeas.service.wiring import agent_accounts

agents_app = CleanHelpTyper(help="Manage the agents allowed to call the agent API (operator commands).")


def _agent_accounts(data_dir: Path | None, database: str | None) -> AgentAccounts:
    """The agents' accounts in the database the options name; exit 2 when their master key cannot be the servers'."""
    settings = command_settings(data_dir, database)
    if database and settings.agent_master_key is None and not (settings.data_dir / MASTER_KEY_FILE).exists():
        raise fail(
            f"no agent master key for {shown_url(database)}: set ORFEAS_AGENT_MASTER_KEY to the key the servers use "
            f"(or pass --data-dir with their {MASTER_KEY_FILE}); a new key would make secrets no server accepts",
            code=2,
        )
    engine = open_engine(settings)
    stderr.print(f"database: {escape(engine.url.render_as_string(hide_password=True))}")
    try:
        return agent_accounts(settings, engine)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Argument(help="A unique name for the agent.")],
    ops: Annotated[str, typer.Option(help="Allowed operations: generate,batch,status,download.")] = (
        "generate,batch,status,download"
    ),
    rate: Annotated[int, typer.Option(help="Requests per minute.")] = 100,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Register an agent and print its key id and secret (shown once: store the secret now)."""
    from orfeas.store.agents import AgentExists

    operations = [op.strip() for op in ops.split(",") if op.strip()]
    try:
        agent, secret = _agent_accounts(data_dir, database).create(name, operations, rate_per_minute=rate)
    except (AgentExists, OrfeasError, ValueError) as exc:
        raise fail(str(exc)) from None
    print(f"key_id: {agent.key_id}")
    print(f"secret: {secret}")
    stderr.print(f"agent {agent.name}: operations {', '.join(agent.operations)}, {agent.rate_per_minute}/min")


@agents_app.command("list")
def agents_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per agent, per line.")] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """List agents (never their secrets); key ids are never cut, other columns wrap to fit the terminal."""
    from orfeas.store.db import as_utc

    agents = _agent_accounts(data_dir, database).store.list()
    if as_json:
        for agent in agents:
            record = {
                "name": agent.name,
                "key_id": agent.key_id,
                "operations": list(agent.operations),
                "rate_per_minute": agent.rate_per_minute,
                "status": "revoked" if agent.revoked_at else "active",
                "created_at": as_utc(agent.created_at).isoformat(),
            }
            print(json.dumps(record))
        return
    # fits 80 columns with a 23-character key id; names and operations wrap
    table = Table(box=None, pad_edge=False, caption="created: date in UTC", caption_justify="left")
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("key id", no_wrap=True)
    table.add_column("operations", min_width=10)
    table.add_column("rate/min", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for agent in agents:
        status = "revoked" if agent.revoked_at else "active"
        table.add_row(
            agent.name, agent.key_id, ", ".join(agent.operations), str(agent.rate_per_minute), status,
            as_utc(agent.created_at).strftime("%Y-%m-%d"),
        )  # fmt: skip
    Console(file=sys.stdout).print(table)


@agents_app.command("revoke")
def agents_revoke(name: str, data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Refuse every further request from an agent."""
    try:
        agent = _agent_accounts(data_dir, database).revoke(name)
    except (OrfeasError, LookupError) as exc:
        raise fail(str(exc)) from None
    print(f"revoked {agent.name} ({agent.key_id})")


@agents_app.command("rotate")
def agents_rotate(name: str, data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Issue a new secret; the old one stops working at once."""
    try:
        agent, secret = _agent_accounts(data_dir, database).rotate(name)
    except (OrfeasError, LookupError) as exc:
        raise fail(str(exc)) from None
    print(f"key_id: {agent.key_id}")
    print(f"secret: {secret}")


@agents_app.command("audit")
def agents_audit(
    name: Annotated[str | None, typer.Argument(help="Only this agent.")] = None,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Show the audit log of agent requests (agent, operation, job, outcome)."""
    entries = _agent_accounts(data_dir, database).store.audit_log(name, limit=limit)
    if as_json:
        for entry in entries:
            print(json.dumps(entry, default=str))
        return
    table = Table()
    for column in ("at (UTC)", "agent", "operation", "job", "outcome", "detail"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            utc_text(entry.get("at")), str(entry.get("agent") or entry.get("key_id") or ""),
            str(entry.get("operation", "")), str(entry.get("job_id") or ""), str(entry.get("outcome", "")),
            str(entry.get("detail") or "")[:60],
        )  # fmt: skip
    Console(file=sys.stdout).print(table)


def utc_text(value: object) -> str:
    """An audit time (a datetime or its ISO text) as "2026-01-31 14:05:09 UTC"."""
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return ""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
