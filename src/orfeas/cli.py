"""The `orfeas` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import trimesh
import typer
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orfeas.cli_help import CleanHelpTyper
from orfeas.config import Settings
from orfeas.errors import OrfeasError
from orfeas.logs import configure_logging
from orfeas.pipeline.export import safe_stem
from orfeas.pipeline.generate import GenerationResult, generate, save_result
from orfeas.pipeline.generators import create_generator
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.preview import render_preview

app = CleanHelpTyper(help="ORFEAS: turn images into 3D models.", no_args_is_help=True, add_completion=False)
stderr = Console(stderr=True, soft_wrap=True)  # one error, one line: no wrapping


@app.callback()
def main() -> None:
    """ORFEAS 2D to 3D studio."""


def parse_generator_options(pairs: list[str]) -> dict[str, Any]:
    """`["depth=0.6", "mode=fast"]` → `{"depth": 0.6, "mode": "fast"}` (numbers parsed as JSON)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


@app.command("generate")
def generate_command(
    images: Annotated[
        list[Path] | None,
        typer.Argument(help="Input images (PNG, JPEG, WebP, GIF).", metavar="IMAGE", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.", metavar="DIR")] = Path("out"),
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: glb,obj,stl,ply.", metavar="FORMATS")
    ] = "glb",
    backend: Annotated[str, typer.Option(help="Shape generator.", metavar="NAME")] = "inflate",
    resolution: Annotated[
        int | None,
        typer.Option(help="Grid cells across the object.", metavar="N", show_default="the generator's; inflate 192"),
    ] = None,
    faces: Annotated[int, typer.Option(help="Face budget.", metavar="N")] = 50_000,
    texture: Annotated[bool, typer.Option("--texture/--no-texture", help="Texture, or vertex colours.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed for generators that sample.", metavar="N")] = 0,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Generator option KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout.")] = False,
    view: Annotated[
        list[str] | None,
        typer.Option(
            "--view",
            help="One view of a single object, NAME=IMAGE (front, left, back, right; repeatable, front required): "
            "one model from all of them, for a multi-view model (-O model=hunyuan3d-dit-v2-mv).",
            metavar="NAME=IMAGE",
        ),
    ] = None,
) -> None:
    """Generate a 3D model for each image: DIR/<stem>.<fmt> plus DIR/<stem>.json with the report.

    Two images with the same stem (mug.png, mug.jpg) get mug.* and mug-2.*, and the command says so. With --view,
    the views make one model, named after the front view.
    """
    settings = Settings().pipeline()
    views = parse_views(view or [])
    if views and images:
        raise _fail("give either images or --view NAME=IMAGE for the views of one object, not both", code=2)
    if not views and not images:
        raise _fail("no input: give one or more images, or --view front=IMAGE ...", code=2)
    inputs: list[Path | dict[str, Path]] = [views] if views else list(images or [])
    check_generate_arguments(list(views.values()) if views else images, out)
    stems = output_stems([views["front"]] if views else images)
    try:
        options = GenerateOptions.build(
            backend=backend,
            resolution=resolution,
            faces=faces,
            texture=texture,
            formats=formats,
            seed=seed,
            generator_options=parse_generator_options(option or []),
        )
        generator = create_generator(options.backend, settings)
    except OrfeasError as exc:
        stderr.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    failures = 0
    results: list[tuple[Path, GenerationResult]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=len(inputs) < 2 or as_json,
        transient=True,
    ) as progress:
        task = progress.add_task("generating", total=len(inputs))
        for item, stem in zip(inputs, stems, strict=True):
            path = item["front"] if isinstance(item, dict) else item
            progress.update(task, description=path.name)
            try:
                result = generate(item, options, settings, generator)
                save_result(result, out, stem)
            except OrfeasError as exc:
                failures += 1
                stderr.print(f"[red]error:[/red] {escape(about(path, exc))}")
                if as_json:
                    print(json.dumps({"image": str(path), "error": str(exc)}), flush=True)
            else:
                results.append((path, result))
                if as_json:
                    print(json.dumps({"image": str(path), **result.report()}), flush=True)
            progress.advance(task)

    if not as_json and results:
        _print_table(results, out)
    if failures:
        raise typer.Exit(1)


def parse_views(pairs: list[str]) -> dict[str, Path]:
    """`--view front=a.png --view back=b.png` as {view name: path}; one line and exit 2 for a bad pair or name."""
    from orfeas.pipeline.views import check_view_names

    views: dict[str, Path] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value:
            raise _fail(f"--view {pair!r}: expected NAME=IMAGE, e.g. --view front=photo.png", code=2)
        if name.strip() in views:
            raise _fail(f"--view {name.strip()} given twice", code=2)
        views[name.strip()] = Path(value)
    if views:
        try:
            views = {name: views[name] for name in check_view_names(views)}
        except OrfeasError as exc:
            raise _fail(str(exc), code=2) from None
    return views


def check_generate_arguments(images: list[Path], out: Path) -> None:
    """Refuse, before any work, inputs that are folders or missing and an output folder that is a file."""
    problems = []
    for path in images:
        if path.is_dir():
            problems.append(f"{path} is a folder: pass the images in it ({path.as_posix().rstrip('/')}/*.png)")
        elif not path.exists():
            problems.append(f"{path}: no such file")
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out} is a file: name a folder (it is created if missing)")
    for problem in problems:
        stderr.print(f"[red]error:[/red] {escape(problem)}")
    if problems:
        raise typer.Exit(2)


def output_stems(images: list[Path]) -> list[str]:
    """The file stem each image's outputs get: its own (made safe), or with -2, -3... when an earlier image has it.

    File systems that ignore case would merge "Mug" and "mug", so stems are compared without case. Each renamed
    image is reported on stderr.
    """
    stems: list[str] = []
    taken: dict[str, Path] = {}
    for path in images:
        base = safe_stem(path.stem)
        stem, number = base, 1
        while stem.lower() in taken:
            number += 1
            stem = f"{base}-{number}"
        if stem != base:
            stderr.print(f"{escape(str(path))} → {escape(stem)}.* ({escape(str(taken[base.lower()]))} makes {base}.*)")
        taken[stem.lower()] = path
        stems.append(stem)
    return stems


def about(path: Path, exc: Exception) -> str:
    """An error about one file, naming the file once."""
    message = str(exc)
    return message if str(path) in message else f"{path}: {message}"


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Database and results folder.", show_default="./orfeas-data")
    ] = None,
    database: Annotated[str | None, typer.Option(help="Database URL.", show_default="SQLite in the data dir")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Run a worker in this process.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Also serve /metrics without authentication on this port, for Prometheus (off by default)."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address the metrics port listens on.")] = "127.0.0.1",
    workers: Annotated[
        int,
        typer.Option(
            help="API processes sharing the port; with more than one the worker loop runs in a process of its own.",
            min=1,
            metavar="N",
        ),
    ] = 1,
) -> None:
    """Start the HTTP API (and a worker): open http://HOST:PORT/docs for the API reference.

    On the API port /metrics needs a signed-in user or an API key; `--metrics-port` serves the same metrics
    unauthenticated on a port of their own, to be reached only from the monitoring network.
    """
    from orfeas.api.app import create_app
    from orfeas.api.server import serve as serve_app

    overrides = {key: value for key, value in {"data_dir": data_dir, "database_url": database}.items() if value}
    settings = Settings(host=host, **overrides)
    configure_logging(log_level, settings.log_format)
    if database and not settings.data_dir.exists():
        stderr.print(f"[red]error:[/red] the shared data directory {settings.data_dir} does not exist")
        raise typer.Exit(2)
    try:
        application = create_app(settings, run_worker=worker and workers == 1)
    except (OrfeasError, ValueError) as exc:
        stderr.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if workers > 1:
        if metrics_port is not None:
            raise _fail("--metrics-port serves one process's metrics: use it with --workers 1", code=2)
        _serve_processes(settings, port, workers, worker, log_level)
        return
    if metrics_port is not None:
        _serve_metrics_registry(application.state.services.metrics.registry, metrics_host, metrics_port)

    def announce() -> None:
        stderr.print(f"ORFEAS is serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
        stderr.print(f"data: {settings.data_dir.resolve()}")
        if settings.auth == "off":
            stderr.print(
                "authentication is off (ORFEAS_AUTH=off): everyone who reaches this loopback port is the admin"
            )
        elif not application.state.services.accounts.has_admin():
            stderr.print("no admin yet: create one with `orfeas users create NAME --admin`, then sign in at /login")

    if not serve_app(application, settings, port, log_level, on_ready=announce):
        stderr.print(f"[red]error:[/red] could not listen on {host}:{port} (is another server using the port?)")
        raise typer.Exit(2)


agents_app = CleanHelpTyper(help="Manage the agents allowed to call the agent API (operator commands).")
app.add_typer(agents_app, name="agents")

DataDirOption = Annotated[
    Path | None, typer.Option(help="Data folder of the server.", metavar="DIR", show_default="./orfeas-data")
]
DatabaseOption = Annotated[
    str | None, typer.Option(help="Database URL.", metavar="URL", show_default="SQLite in the data folder")
]


def _agent_accounts(data_dir: Path | None, database: str | None):
    from orfeas.service.agent_accounts import AgentAccounts
    from orfeas.service.agent_keys import MASTER_KEY_FILE, check_master_key, load_master_key
    from orfeas.store.agents import AgentStore
    from orfeas.store.users import UserStore

    settings = _settings(data_dir, database)
    if database and settings.agent_master_key is None and not (settings.data_dir / MASTER_KEY_FILE).exists():
        raise _fail(
            f"no agent master key for {_shown_url(database)}: set ORFEAS_AGENT_MASTER_KEY to the key the servers use "
            f"(or pass --data-dir with their {MASTER_KEY_FILE}); a new key would make secrets no server accepts",
            code=2,
        )
    engine = _open_engine(settings)
    stderr.print(f"database: {escape(engine.url.render_as_string(hide_password=True))}")
    master_key = load_master_key(settings.agent_master_key, settings.data_dir)
    try:
        check_master_key(UserStore(engine), master_key)
    except ValueError as exc:
        raise _fail(str(exc), code=2) from None
    return AgentAccounts(AgentStore(engine), master_key)


def _settings(data_dir: Path | None, database: str | None) -> Settings:
    overrides = {key: value for key, value in {"data_dir": data_dir, "database_url": database}.items() if value}
    return Settings(**overrides)


def _open_engine(settings: Settings):
    """The job database these settings name, migrated; one line and exit 2 when it cannot be opened."""
    from orfeas.store.db import sqlite_url
    from orfeas.store.startup import open_database

    if not settings.database_url:
        _ensure_data_dir(settings.data_dir)
    try:
        return open_database(settings.database_url or sqlite_url(settings.data_dir))
    except OrfeasError as exc:
        raise _fail(str(exc), code=2) from None


def _ensure_data_dir(data_dir: Path) -> None:
    """Create the data folder, saying so: a new folder means a new, empty database, not the server's."""
    if data_dir.is_dir():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr.print(
        f"[yellow]warning:[/yellow] created {escape(str(data_dir.resolve()))} with a new database; "
        "pass --data-dir (or --database) to use a server's"
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    stderr.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


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
        raise _fail(str(exc)) from None
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
        raise _fail(str(exc)) from None
    print(f"revoked {agent.name} ({agent.key_id})")


@agents_app.command("rotate")
def agents_rotate(name: str, data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Issue a new secret; the old one stops working at once."""
    try:
        agent, secret = _agent_accounts(data_dir, database).rotate(name)
    except (OrfeasError, LookupError) as exc:
        raise _fail(str(exc)) from None
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


db_app = CleanHelpTyper(help="The job database's schema (operator commands; servers and workers upgrade at start too).")
app.add_typer(db_app, name="db")


def _database_url(data_dir: Path | None, database: str | None) -> str:
    from orfeas.store.db import sqlite_url

    overrides = {key: value for key, value in {"data_dir": data_dir, "database_url": database}.items() if value}
    settings = Settings(**overrides)
    if not settings.database_url:
        _ensure_data_dir(settings.data_dir)
    return settings.database_url or sqlite_url(settings.data_dir)


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(not a database URL)"


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Bring the database to the newest schema revision (an existing one keeps its jobs and agents)."""
    from orfeas.store.startup import upgrade_database

    try:
        engine, before, head = upgrade_database(_database_url(data_dir, database))
    except OrfeasError as exc:
        raise _fail(str(exc), code=2) from None
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
        raise _fail(f"cannot read the database {_shown_url(url)}: {error_summary(exc)}", code=2) from None
    engine.dispose()
    print(f"current: {current or 'none'}")
    print(f"head: {head_revision()}")


@app.command("mcp")
def mcp_command() -> None:
    """Run the MCP server on stdio (credentials from ORFEAS_AGENT_URL, ORFEAS_AGENT_KEY, ORFEAS_AGENT_SECRET)."""
    try:
        from orfeas.mcp import run
    except ImportError as exc:
        raise _fail(f"the MCP server needs the 'mcp' package: pip install 'orfeas[mcp]' ({exc})") from None

    run()


@app.command("worker")
def worker_command(
    data_dir: Annotated[Path, typer.Option(help="Result folder shared with the API servers (must exist).")] = Path(
        "orfeas-data"
    ),
    database: DatabaseOption = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda:N': whose memory sizes the batches.")] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's Prometheus metrics on this port (off by default).")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address the metrics port listens on.")] = "0.0.0.0",
) -> None:
    """Run a worker without the API: it claims batches from the shared database until stopped (SIGTERM/Ctrl-C).

    With `--metrics-port` it also serves `/metrics` (stage and job durations, batch sizes, this machine's device
    memory), which an API server cannot see when the worker runs elsewhere.
    """
    import os
    import signal
    import threading

    from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
    from orfeas.service.worker import Worker
    from orfeas.store.artifacts import LocalArtifactStore
    from orfeas.store.db import sqlite_url
    from orfeas.store.jobs import JobStore
    from orfeas.store.startup import open_database

    if not data_dir.is_dir():
        raise _fail(f"the shared data directory {data_dir} does not exist (mount it or create it first)", code=2)
    overrides = {key: value for key, value in {"database_url": database}.items() if value}
    settings = Settings(data_dir=data_dir, device=device, **overrides)
    configure_logging(log_level, settings.log_format)
    try:
        engine = open_database(settings.database_url or sqlite_url(settings.data_dir), f"orfeas-worker-{os.getpid()}")
        probe = MemoryProbe(settings.device)
    except (OrfeasError, ValueError) as exc:
        raise _fail(str(exc), code=2) from None
    store = JobStore(engine)
    metrics = None
    if metrics_port is not None:
        metrics = _serve_worker_metrics(store, probe, metrics_host, metrics_port)
    worker = Worker(
        store,
        LocalArtifactStore(settings.data_dir),
        settings,
        BatchSizer(probe, settings.target_utilization, settings.max_batch),
        metrics,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stderr.print(f"worker {worker.worker_id} on {engine.url.render_as_string(hide_password=True)}")
    worker.run(stop)


def _serve_worker_metrics(store: Any, probe: Any, host: str, port: int) -> Any:
    """Start the worker's own `/metrics` endpoint in a background thread; a port in use is a one-line error."""
    from prometheus_client import CollectorRegistry

    from orfeas.service.metrics import ServiceMetrics

    metrics = ServiceMetrics(CollectorRegistry(), store.count_by_status, probe)
    _serve_metrics_registry(metrics.registry, host, port)
    return metrics


def _serve_processes(settings: Settings, port: int, processes: int, worker: bool, log_level: str) -> None:
    """`orfeas serve --workers N`: N API processes (uvicorn's supervisor) and, unless --no-worker, one
    `orfeas worker` process on the same data directory and database; stopping the server stops both."""
    from orfeas.api.server import serve_processes

    os.environ.update(
        {"ORFEAS_DATA_DIR": str(settings.data_dir.resolve()), "ORFEAS_HOST": settings.host}
        | ({"ORFEAS_DATABASE_URL": settings.database_url} if settings.database_url else {})
    )
    loop = None
    if worker:
        command = [sys.executable, "-c", "from orfeas.cli import app; app()", "worker"]
        command += [
            "--data-dir",
            str(settings.data_dir.resolve()),
            "--device",
            settings.device,
            "--log-level",
            log_level,
        ]
        loop = subprocess.Popen(command)
    stderr.print(f"ORFEAS is serving on http://{settings.host}:{port} with {processes} API processes")
    try:
        serve_processes(settings, port, processes, log_level)
    finally:
        if loop is not None:
            loop.terminate()
            loop.wait(timeout=settings.shutdown_grace_seconds + 30)


def _serve_metrics_registry(registry: Any, host: str, port: int) -> None:
    """Serve a Prometheus registry on host:port from a background thread; a port in use is a one-line error."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise _fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", code=2) from None


@app.command("preview")
def preview_command(
    model: Annotated[
        Path, typer.Argument(help="A model file (GLB, OBJ, PLY, STL).", metavar="MODEL", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.", metavar="FILE")] = Path("preview.png"),
    size: Annotated[int, typer.Option(help="Image side in pixels.", metavar="PIXELS", min=16, max=4096)] = 512,
    yaw: Annotated[float, typer.Option(help="Turn about the vertical axis, degrees.", metavar="DEGREES")] = -30.0,
    pitch: Annotated[float, typer.Option(help="Tilt toward the viewer, degrees.", metavar="DEGREES")] = 15.0,
) -> None:
    """Render a model to a PNG on the CPU (no GPU or display needed), in its texture or vertex colours."""
    if model.is_dir():
        raise _fail(f"{model} is a folder: name a model file in it", code=2)
    if not model.exists():
        raise _fail(f"{model}: no such file", code=2)
    if model.suffix.lower() not in MODEL_SUFFIXES:
        raise _fail(f"{model} is not a model file: preview reads {', '.join(MODEL_SUFFIXES)}", code=2)
    if out.is_dir():
        raise _fail(f"--out {out} is a folder: name the PNG to write", code=2)
    try:
        mesh = trimesh.load(model, force="mesh")
    except Exception as exc:  # trimesh raises many kinds on a damaged file; each is one line here
        raise _fail(f"cannot read {model}: {exc}") from None
    if len(getattr(mesh, "faces", ())) == 0:
        raise _fail(f"{model} has no faces")
    image = render_preview(with_base_colour_texture(mesh), size, yaw, pitch)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    print(out)


MODEL_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def with_base_colour_texture(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """An OBJ's texture comes with a simple material (an image); the renderer reads a PBR base colour texture."""
    visual = mesh.visual
    material = getattr(visual, "material", None)
    if visual.kind == "texture" and getattr(material, "image", None) is not None:
        visual.material = material.to_pbr()
    return mesh


def _mount_agent_client() -> None:
    from orfeas.cli_agent import agent_app
    from orfeas.cli_users import keys_app, users_app

    app.add_typer(agent_app, name="agent")
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")


def _print_table(results: list[tuple[Path, GenerationResult]], out: Path) -> None:
    table = Table(title=f"Models written to {out.resolve()}")
    for column in ("image", "files", "faces", "watertight", "seconds", "slowest stage"):
        table.add_column(column, justify="right" if column in ("faces", "seconds") else "left")
    for path, result in results:
        profile = result.profile
        main_files = [f.name for f in result.files if f.suffix.lstrip(".") in result.options.formats]
        table.add_row(
            path.name,
            " ".join(main_files),
            f"{len(result.mesh.faces):,}",
            "yes" if result.mesh.is_watertight else "no",
            f"{profile.total:.2f}",
            (profile.slowest() or "").replace("_", " "),
        )
    Console(file=sys.stdout, width=max(Console().width, 110)).print(table)


_mount_agent_client()

if __name__ == "__main__":
    app()
