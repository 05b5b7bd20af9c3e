"""`orfeas agent ...`: call a running ORFEAS server through the agent API, with the SDK in `orfeas.client`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orfeas.cli.generate import parse_generator_options
from orfeas.cli.help import CleanHelpTyper
from orfeas.client import AgentClient, ApiError, JobFailed, MissingCredentials, ServerUnreachable
from orfeas.client.agent import result_filename

agent_app = CleanHelpTyper(
    help="Call a running ORFEAS server as an agent (credentials from ORFEAS_AGENT_URL/KEY/SECRET).",
    no_args_is_help=True,
)
stderr = Console(stderr=True)

# Failures reported as one line: refusals from the server, an unreachable server, missing credentials or files.
AGENT_ERRORS = (ApiError, ServerUnreachable, MissingCredentials, FileNotFoundError, TimeoutError)


def print_error(message: str) -> None:
    """One red line on stderr, however long."""
    stderr.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


def submission_options(
    formats: str | None,
    faces: int | None,
    resolution: int | None,
    texture: bool | None,
    backend: str | None = None,
    seed: int | None = None,
    generator_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The options the user gave, and only those: the server fills in its defaults for the rest."""
    options: dict[str, Any] = {}
    if backend is not None:
        options["backend"] = backend
    if seed is not None:
        options["seed"] = seed
    if generator_options:
        options["generator_options"] = generator_options
    if formats is not None:
        options["formats"] = [part.strip() for part in formats.split(",") if part.strip()]
    if faces is not None:
        options["faces"] = faces
    if resolution is not None:
        options["resolution"] = resolution
    if texture is not None:
        options["texture"] = texture
    return options


def submit(client: AgentClient, images: list[Path], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One request for one image, a batch request for several."""
    if len(images) == 1:
        return [client.generate(images[0], **options)]
    return client.batch(images, **options)


def wait_with_progress(
    client: AgentClient, jobs: list[dict[str, Any]], names: list[str]
) -> list[dict[str, Any] | None]:
    """Wait for each job in turn, one progress bar per job; the final jobs, None for those that failed."""
    finished: list[dict[str, Any] | None] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress:
        tasks = [progress.add_task(escape(name), total=100, stage="queued") for name in names]
        for job, task in zip(jobs, tasks, strict=True):

            def update(view: dict[str, Any], task: TaskID = task) -> None:
                stage = view.get("stage") or view.get("status") or ""
                progress.update(task, completed=view.get("progress") or 0, stage=escape(str(stage)))

            try:
                finished.append(client.wait(job["id"], on_progress=update))
                progress.update(task, completed=100, stage="done")
            except JobFailed as exc:
                finished.append(None)
                progress.update(task, stage=f"[red]{escape(str(exc.job.get('status')))}[/red]")
                print_error(str(exc))
    return finished


@agent_app.command("generate")
def generate_command(
    images: Annotated[
        list[Path],
        typer.Argument(help="Input images (PNG, JPEG, WebP, GIF).", metavar="IMAGE", show_default=False),
    ],
    formats: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="Comma-separated: glb,obj,stl,ply.", metavar="FORMATS", show_default="server's, glb"
        ),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Shape generator.", metavar="NAME", show_default="server's, inflate")
    ] = None,
    faces: Annotated[int | None, typer.Option(help="Face budget.", metavar="N", show_default="server's")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Grid cells across the object.", metavar="N", show_default="generator's")
    ] = None,
    texture: Annotated[
        bool | None,
        typer.Option("--texture/--no-texture", help="Texture, or vertex colours.", show_default="texture"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed for generators that sample.", metavar="N", show_default="0")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Generator option KEY=VALUE (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs and download the results.")] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the downloaded results.", metavar="DIR")] = Path(
        "out"
    ),
) -> None:
    """Submit images; with --wait, follow the jobs and download OUT/<image stem>.<format> (OBJ as .obj.zip).

    Prints "JOB_ID  IMAGE" per job on submission, then "JOB_ID  PATH" per downloaded file.
    """
    options = submission_options(
        formats, faces, resolution, texture, backend, seed, parse_generator_options(option or [])
    )
    for image in images:
        if image.is_dir():
            fail(f"{image} is a folder: pass the images in it ({image.as_posix().rstrip('/')}/*.png)")
        if not image.exists():
            fail(f"{image}: no such file")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: name a folder (it is created if missing)")
    names = [image.name for image in images]
    try:
        with AgentClient.from_env() as client:
            jobs = submit(client, images, options)
            for job, name in zip(jobs, names, strict=True):
                print(f"{job['id']}  {name}")
            if not wait:
                return
            finished = wait_with_progress(client, jobs, names)
            out.mkdir(parents=True, exist_ok=True)
            for image, final in zip(images, finished, strict=True):
                if final is None:
                    continue  # failed: reported by wait_with_progress
                for fmt in final["result_urls"]:
                    path = client.download(final["id"], fmt, out / result_filename(image.stem, fmt))
                    print(f"{final['id']}  {path}")
    except AGENT_ERRORS as exc:
        fail(str(exc))
    if None in finished:
        raise typer.Exit(1)


@agent_app.command("status")
def status_command(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `orfeas agent generate`.", metavar="JOB_ID")],
) -> None:
    """Print a job's status, progress, stage, error and result URLs as JSON."""
    try:
        with AgentClient.from_env() as client:
            job = client.status(job_id)
    except AGENT_ERRORS as exc:
        fail(str(exc))
    print(json.dumps(job, indent=2))
