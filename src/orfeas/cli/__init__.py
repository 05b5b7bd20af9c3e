"""The `orfeas` command line: one module per command group, mounted here on `app` (the console script)."""

from __future__ import annotations

from orfeas.cli import agent_client, agents_admin, db, generate, servers, users
from orfeas.cli.help import CleanHelpTyper

app = CleanHelpTyper(help="ORFEAS: turn images into 3D models.", no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """ORFEAS 2D to 3D studio."""


# in the order `orfeas --help` lists them
app.command("generate")(generate.generate_command)
app.command("serve")(servers.serve_command)
app.add_typer(agents_admin.agents_app, name="agents")
app.add_typer(db.db_app, name="db")
app.command("mcp")(servers.mcp_command)
app.command("worker")(servers.worker_command)
app.command("preview")(generate.preview_command)
app.add_typer(agent_client.agent_app, name="agent")
app.add_typer(users.users_app, name="users")
app.add_typer(users.keys_app, name="keys")
