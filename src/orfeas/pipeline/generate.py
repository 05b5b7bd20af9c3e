"""Image to mesh, end to end: the pipeline reads top to bottom as the stages run.

load → remove background → generate shape (batched) → extract mesh → clean up → texture → export.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import trimesh

from orfeas.errors import InvalidOptions, Stopped
from orfeas.files import write_atomically
from orfeas.pipeline.background import BackgroundRemover, Cutout, prepare_image
from orfeas.pipeline.cleanup import clean_mesh
from orfeas.pipeline.export import export_mesh, safe_stem, to_export_frame
from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators import GenerationParams, Generator, GridField, Shape, create_generator
from orfeas.pipeline.image import load_image
from orfeas.pipeline.learned_remover import create_remover
from orfeas.pipeline.options import GenerateOptions
from orfeas.pipeline.profile import Profile
from orfeas.pipeline.settings import PipelineSettings
from orfeas.pipeline.stages import Stage
from orfeas.pipeline.texture import apply_texture, apply_vertex_colors
from orfeas.pipeline.views import batch_views, ordered_views

ImageSource = str | os.PathLike[str] | bytes | np.ndarray
# Called as on_stage(image_index, stage_name) when a stage starts for an image (the service turns it into progress).
StageCallback = Callable[[int, Stage], None]


@dataclass
class GenerationResult:
    """A finished mesh (export frame: centred, longest side 1) with the cut-out it came from and its profile."""

    mesh: trimesh.Trimesh
    cutout: Cutout
    profile: Profile
    options: GenerateOptions
    generator: str
    batch_size: int = 1
    files: list[Path] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """What the CLI and the service record about a generation."""
        return {
            "generator": self.generator,
            "parameters": self.options.model_dump(),
            "batch_size": self.batch_size,
            "background": self.cutout.method,
            "vertices": len(self.mesh.vertices),
            "faces": len(self.mesh.faces),
            "watertight": bool(self.mesh.is_watertight),
            "profile": self.profile.to_dict(),
            "files": [path.name for path in self.files],
        }


def generate(
    image: ImageSource | Mapping[str, ImageSource],
    options: GenerateOptions | None = None,
    settings: PipelineSettings | None = None,
    generator: Generator | None = None,
    remover: BackgroundRemover | None = None,
    on_stage: StageCallback | None = None,
) -> GenerationResult:
    """Turn one image (path, bytes or RGBA array), or one object's views, into a mesh; see `generate_batch`."""
    return generate_batch([image], options, settings, generator, remover, on_stage)[0]


def generate_batch(
    images: Sequence[ImageSource | Mapping[str, ImageSource]],
    options: GenerateOptions | Sequence[GenerateOptions] | None = None,
    settings: PipelineSettings | None = None,
    generator: Generator | None = None,
    remover: BackgroundRemover | None = None,
    on_stage: StageCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Turn several images into meshes, passing them through the generator as one batch.

    `should_stop()` is asked at every stage and by the generator between its steps; when it says yes, Stopped is
    raised (the service asks it whether any job of the batch is still wanted).

    `options` is one set for all images or one per image; per-image sets may differ in seed, faces, texture and
    formats but must share what the generator sees (backend, resolution, generator options): `batch_key`.
    Raises InvalidImage for the first unusable image before any shape is generated.

    An item may instead be a mapping of view name to image (`pipeline.views`: front required, left, back, right), a
    multi-view job for a generator that has `check_views` (hunyuan3d's mv models): every view is loaded and cut out,
    and the front one is the cut-out the texture and the result come from. Items of a batch are all single images
    or all views with the same names; InvalidOptions otherwise, or when the model does not take that kind of input.
    """
    settings = settings or PipelineSettings()
    per_image = _options_per_image(options, len(images))
    generator = generator or create_generator(per_image[0].backend, settings)
    per_image = [_with_resolution(o, generator.default_resolution) for o in per_image]
    check_input_views(generator, per_image[0], batch_views(images))
    report = on_stage or (lambda _index, _stage: None)

    def notify(index: int, stage: Stage) -> None:
        if should_stop is not None and should_stop():
            raise Stopped(f"generation stopped before {stage}: every job of the batch was canceled")
        report(index, stage)

    profiles = [Profile() for _ in images]
    # the learned remover the settings name, if any (a caller that generates often builds it once and passes it)
    remover = remover if remover is not None else create_remover(settings)

    cutouts = []
    for index, (image, profile) in enumerate(zip(images, profiles, strict=True)):
        notify(index, Stage.IMAGE_LOADING)
        cutouts.append(_prepare_item(image, profile, settings, remover))
    for index in range(len(images)):
        notify(index, Stage.SHAPE_GENERATION)
    shapes = _generate_shapes(generator, cutouts, per_image, profiles, should_stop)

    results = []
    for index, (cutout, shape, profile, opts) in enumerate(zip(cutouts, shapes, profiles, per_image, strict=True)):
        front = _front(cutout)
        mesh = _finish_mesh(shape, front, opts, profile, functools.partial(notify, index))
        results.append(GenerationResult(mesh, front, profile, opts, generator.name, batch_size=len(images)))
    return results


def batch_key(options: GenerateOptions, views: Sequence[str] = ()) -> str:
    """Jobs with equal keys can share one generator call; `views` are a multi-view job's view names (() for one
    image), so multi-view jobs travel only with jobs of the same views (and variant, in generator_options)."""
    shared: dict[str, Any] = {
        "backend": options.backend,
        "resolution": options.resolution,
        "generator_options": options.generator_options,
    }
    if views:
        shared["views"] = sorted(views)
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:32]


def _options_per_image(
    options: GenerateOptions | Sequence[GenerateOptions] | None, count: int
) -> list[GenerateOptions]:
    if options is None or isinstance(options, GenerateOptions):
        return [options or GenerateOptions()] * count
    per_image = list(options)
    if len(per_image) != count:
        raise InvalidOptions(f"{len(per_image)} option sets for {count} images")
    if len({batch_key(o) for o in per_image}) > 1:
        raise InvalidOptions("images in one batch must share backend, resolution and generator options")
    return per_image


def _with_resolution(options: GenerateOptions, default: int) -> GenerateOptions:
    if options.resolution is not None:
        return options
    return options.model_copy(update={"resolution": default})


def _prepare(
    image: ImageSource, profile: Profile, settings: PipelineSettings, remover: BackgroundRemover | None
) -> Cutout:
    with profile.stage(Stage.IMAGE_LOADING):
        rgba = image if isinstance(image, np.ndarray) else load_image(image, max_pixels=settings.max_image_pixels)
    with profile.stage(Stage.BACKGROUND_REMOVAL):
        return prepare_image(rgba, size=settings.image_size, margin=settings.crop_margin, remover=remover)


def check_input_views(generator: Generator, options: GenerateOptions, views: Sequence[str]) -> None:
    """InvalidOptions when the input's kind does not suit the generator: views for a generator without multi-view
    models, or the generator's own check (a single image for a multi-view model, views for a single-view one)."""
    check = getattr(generator, "check_views", None)
    if check is not None:
        check(dict(options.generator_options), tuple(views))
    elif views:
        raise InvalidOptions(f"generator {generator.name} takes one image per job, not views")


def _prepare_item(
    item: ImageSource | Mapping[str, ImageSource],
    profile: Profile,
    settings: PipelineSettings,
    remover: BackgroundRemover | None,
) -> Cutout | dict[str, Cutout]:
    if isinstance(item, Mapping):
        return {name: _prepare(view, profile, settings, remover) for name, view in ordered_views(item).items()}
    return _prepare(item, profile, settings, remover)


def _front(item: Cutout | Mapping[str, Cutout]) -> Cutout:
    return item["front"] if isinstance(item, Mapping) else item


def _generate_shapes(
    generator: Generator,
    cutouts: list[Cutout | dict[str, Cutout]],
    options: list[GenerateOptions],
    profiles: list[Profile],
    should_stop: Callable[[], bool] | None = None,
) -> list[Shape]:
    first = options[0]
    params = GenerationParams(
        resolution=generator.default_resolution if first.resolution is None else first.resolution,
        seed=first.seed,
        options=dict(first.generator_options),
        seeds=tuple(o.seed for o in options),
        should_stop=should_stop,
    )
    batch = Profile()
    with batch.stage(Stage.SHAPE_GENERATION):
        # items are views only for a generator whose check_views admitted them, and its generate_batch takes them
        shapes = generator.generate_batch(cast(list[Cutout], cutouts), params)
    # one forward pass served the whole batch: each job is charged its share
    for profile in profiles:
        profile.add(Stage.SHAPE_GENERATION, batch.total / len(cutouts))
    return shapes


def _finish_mesh(
    shape: Shape, cutout: Cutout, options: GenerateOptions, profile: Profile, notify: Callable[[Stage], None]
) -> trimesh.Trimesh:
    if isinstance(shape, GridField):
        notify(Stage.MESH_EXTRACTION)
        with profile.stage(Stage.MESH_EXTRACTION):
            shape = extract_mesh(shape)
    notify(Stage.MESH_CLEANUP)
    with profile.stage(Stage.MESH_CLEANUP):
        mesh = clean_mesh(shape, options.faces)
    notify(Stage.TEXTURING)
    with profile.stage(Stage.TEXTURING):
        mesh = apply_texture(mesh, cutout) if options.texture else apply_vertex_colors(mesh, cutout)
    return to_export_frame(mesh)


def save_result(result: GenerationResult, out_dir: Path, stem: str) -> list[Path]:
    """Write the mesh in every requested format and `<stem>.json` with the report; returns the paths.

    Characters that do not belong in a file name are replaced in the stem ("my photo" → "my_photo").
    """
    stem = safe_stem(stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    with result.profile.stage(Stage.EXPORT):
        for fmt in result.options.formats:
            result.files.extend(export_mesh(result.mesh, out_dir, stem, fmt))
    report_path = out_dir / f"{stem}.json"
    write_atomically(report_path, json.dumps(result.report(), indent=2).encode())
    return [*result.files, report_path]
