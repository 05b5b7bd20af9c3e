"""`orfeas serve`, `orfeas worker` and `orfeas mcp`: the long-running processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry

from orfeas.cli.console import fail, stderr
from orfeas.cli.settings import DatabaseOption, command_settings
from orfeas.config import Settings
from orfeas.errors import OrfeasError
from orfeas.logs import configure_logging
from orfeas.service.wiring import build_job_parts, open_job_database


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

    settings = command_settings(data_dir, database, host=host)
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
            raise fail("--metrics-port serves one process's metrics: use it with --workers 1", code=2)
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


def mcp_command() -> None:
    """Run the MCP server on stdio (credentials from ORFEAS_AGENT_URL, ORFEAS_AGENT_KEY, ORFEAS_AGENT_SECRET)."""
    try:
        from orfeas.mcp import run
    except ImportError as exc:
        raise fail(f"the MCP server needs the 'mcp' package: pip install 'orfeas[mcp]' ({exc})") from None

    run()


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
    if not data_dir.is_dir():
        raise fail(f"the shared data directory {data_dir} does not exist (mount it or create it first)", code=2)
    settings = command_settings(data_dir, database, device=device)
    configure_logging(log_level, settings.log_format)
    try:
        engine = open_job_database(settings, "worker")
        parts = build_job_parts(settings, engine)
    except (OrfeasError, ValueError) as exc:
        raise fail(str(exc), code=2) from None
    metrics = None
    if metrics_port is not None:
        metrics = parts.metrics(parts.probe)
        _serve_metrics_registry(metrics.registry, metrics_host, metrics_port)
    worker = parts.worker(metrics)
    stop = threading.Event()

    def stop_worker(*_: object) -> None:
        stop.set()
        worker.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_worker)
    stderr.print(f"worker {worker.worker_id} on {engine.url.render_as_string(hide_password=True)}")
    worker.run(stop)


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


def _serve_metrics_registry(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serve a Prometheus registry on host:port from a background thread; a port in use is a one-line error."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", code=2) from None
