"""Image to mesh, end to end: the pipeline reads top to bottom as the stages run.

load → remove background → generate shape (batched) → extract mesh → clean up → texture → export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from orfeas.config import Settings
from orfeas.options import GenerateOptions
from orfeas.pipeline.background import BackgroundRemover, Cutout, prepare_image
from orfeas.pipeline.cleanup import clean_mesh
from orfeas.pipeline.export import export_mesh, safe_stem, to_export_frame
from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators import GenerationParams, Generator, GridField, create_generator
from orfeas.pipeline.image import load_image
from orfeas.pipeline.profile import Profile
from orfeas.pipeline.texture import apply_texture, apply_vertex_colors

ImageSource = str | os.PathLike | bytes | np.ndarray


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
    image: ImageSource,
    options: GenerateOptions | None = None,
    settings: Settings | None = None,
    generator: Generator | None = None,
    remover: BackgroundRemover | None = None,
) -> GenerationResult:
    """Turn one image (path, bytes or RGBA array) into a mesh; see `generate_batch`."""
    return generate_batch([image], options, settings, generator, remover)[0]


def generate_batch(
    images: Sequence[ImageSource],
    options: GenerateOptions | None = None,
    settings: Settings | None = None,
    generator: Generator | None = None,
    remover: BackgroundRemover | None = None,
) -> list[GenerationResult]:
    """Turn several images into meshes, passing them through the generator as one batch.

    Raises InvalidImage for the first unusable image before any shape is generated.
    """
    options = options or GenerateOptions()
    settings = settings or Settings()
    generator = generator or create_generator(options.backend, settings)
    if options.resolution is None:
        options = options.model_copy(update={"resolution": generator.default_resolution})
    profiles = [Profile() for _ in images]

    cutouts = [_prepare(image, profile, settings, remover) for image, profile in zip(images, profiles, strict=True)]
    shapes = _generate_shapes(generator, cutouts, options, profiles)

    results = []
    for cutout, shape, profile in zip(cutouts, shapes, profiles, strict=True):
        mesh = _finish_mesh(shape, cutout, options, profile)
        results.append(GenerationResult(mesh, cutout, profile, options, generator.name, batch_size=len(images)))
    return results


def _prepare(image: ImageSource, profile: Profile, settings: Settings, remover: BackgroundRemover | None) -> Cutout:
    with profile.stage("image_loading"):
        rgba = image if isinstance(image, np.ndarray) else load_image(image, max_pixels=settings.max_image_pixels)
    with profile.stage("background_removal"):
        return prepare_image(rgba, size=settings.image_size, margin=settings.crop_margin, remover=remover)


def _generate_shapes(
    generator: Generator, cutouts: list[Cutout], options: GenerateOptions, profiles: list[Profile]
) -> list:
    params = GenerationParams(resolution=options.resolution, seed=options.seed, options=dict(options.generator_options))
    batch = Profile()
    with batch.stage("shape_generation"):
        shapes = generator.generate_batch(cutouts, params)
    # one forward pass served the whole batch: each job is charged its share
    for profile in profiles:
        profile.add("shape_generation", batch.total / len(cutouts))
    return shapes


def _finish_mesh(shape, cutout: Cutout, options: GenerateOptions, profile: Profile) -> trimesh.Trimesh:
    if isinstance(shape, GridField):
        with profile.stage("mesh_extraction"):
            shape = extract_mesh(shape)
    with profile.stage("mesh_cleanup"):
        mesh = clean_mesh(shape, options.faces)
    with profile.stage("texturing"):
        mesh = apply_texture(mesh, cutout) if options.texture else apply_vertex_colors(mesh, cutout)
    return to_export_frame(mesh)


def save_result(result: GenerationResult, out_dir: Path, stem: str) -> list[Path]:
    """Write the mesh in every requested format and `<stem>.json` with the report; returns the paths.

    Characters that do not belong in a file name are replaced in the stem ("my photo" → "my_photo").
    """
    stem = safe_stem(stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    with result.profile.stage("export"):
        for fmt in result.options.formats:
            result.files.extend(export_mesh(result.mesh, out_dir, stem, fmt))
    report_path = out_dir / f"{stem}.json"
    _write_text_atomically(report_path, json.dumps(result.report(), indent=2))
    return [*result.files, report_path]


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
