"""`orfeas generate` and `orfeas preview`: models made and drawn on this machine, without a server."""

from __future__ import annotations

import json
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
from trimesh.visual.material import SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from orfeas.cli.console import fail, stderr
from orfeas.config import Settings
from orfeas.errors import OrfeasError
from orfeas.pipeline.export import safe_stem
from orfeas.pipeline.generate import GenerationResult, generate, save_result
from orfeas.pipeline.generators import create_generator
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.preview import render_preview


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
        raise fail("give either images or --view NAME=IMAGE for the views of one object, not both", code=2)
    if not views and not images:
        raise fail("no input: give one or more images, or --view front=IMAGE ...", code=2)
    paths = list(images or [])
    inputs: list[Path | dict[str, Path]] = [views] if views else list(paths)
    check_generate_arguments(list(views.values()) if views else paths, out)
    stems = output_stems([views["front"]] if views else paths)
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
            raise fail(f"--view {pair!r}: expected NAME=IMAGE, e.g. --view front=photo.png", code=2)
        if name.strip() in views:
            raise fail(f"--view {name.strip()} given twice", code=2)
        views[name.strip()] = Path(value)
    if views:
        try:
            views = {name: views[name] for name in check_view_names(views)}
        except OrfeasError as exc:
            raise fail(str(exc), code=2) from None
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
        raise fail(f"{model} is a folder: name a model file in it", code=2)
    if not model.exists():
        raise fail(f"{model}: no such file", code=2)
    if model.suffix.lower() not in MODEL_SUFFIXES:
        raise fail(f"{model} is not a model file: preview reads {', '.join(MODEL_SUFFIXES)}", code=2)
    if out.is_dir():
        raise fail(f"--out {out} is a folder: name the PNG to write", code=2)
    try:
        mesh = trimesh.load(model, force="mesh")
    except Exception as exc:  # trimesh raises many kinds on a damaged file; each is one line here
        raise fail(f"cannot read {model}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise fail(f"{model} has no faces")
    image = render_preview(with_base_colour_texture(mesh), size, yaw, pitch)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    print(out)


MODEL_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def with_base_colour_texture(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """An OBJ's texture comes with a simple material (an image); the renderer reads a PBR base colour texture."""
    visual = mesh.visual
    if not isinstance(visual, TextureVisuals):
        return mesh
    if isinstance(visual.material, SimpleMaterial) and visual.material.image is not None:
        visual.material = visual.material.to_pbr()
    return mesh
