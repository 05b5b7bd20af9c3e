"""The Hunyuan3D-2 family: which variants exist, their published defaults, and where each one's weights are.

Three families share one code path in hy3dgen: Hunyuan3D-2 (a 1.1 B DiT over 3072 latent tokens), 2mini (a 0.6 B
DiT over 512) and 2mv (Hunyuan3D-2's DiT conditioned on up to four views through `DinoImageEncoderMV`). Each comes
as the base model, `-fast` (guidance distilled: one DiT sequence per image instead of two) and `-turbo` (guidance
distilled and step distilled, sampled in a few steps with the consistency flow-matching scheduler and decoded by
the lighter turbo VAE of the FlashVDM paper). A variant's name is its folder in its hub repository.

The architecture itself is always read from the variant's config.yaml; the registry holds what the config does not
say: the defaults Tencent's examples run it with (steps, guidance), the scheduler its config names, the VAE it pairs
with and whether it takes several views. Weights are located on disk only, never downloaded.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.settings import PipelineSettings

SCHEDULERS = "hy3dgen.shapegen.schedulers"
FLOW_MATCHING = "FlowMatchEulerDiscreteScheduler"
CONSISTENCY = "ConsistencyFlowMatchEulerDiscreteScheduler"


@dataclass(frozen=True)
class Variant:
    """One published Hunyuan3D-2 shape model and the defaults it is run with."""

    name: str
    repo: str
    family: str  # "standard", "mini" or "mv"
    purpose: str
    steps: int
    guidance_scale: float
    scheduler: str  # class name in hy3dgen.shapegen.schedulers that the published config.yaml names
    guidance_distilled: bool  # guidance enters as an embedding: one DiT sequence per image, not two
    vae: str | None  # folder of the separate VAE the variant pairs with; None: the VAE inside its checkpoint
    vae_repo: str
    latents: int  # latent tokens of its VAE (for memory estimates before the weights are read)
    views: int  # most views it is conditioned on; 1 for single-image models

    @property
    def multiview(self) -> bool:
        return self.views > 1


def _family(family: str, repo: str, base: str, turbo_vae: tuple[str, str], latents: int, views: int) -> list[Variant]:
    """The three members of a family: base (flow matching, guided), -fast (guidance distilled), -turbo."""
    vae_repo, vae = turbo_vae
    member = functools.partial(
        Variant, repo=repo, family=family, guidance_scale=5.0, vae_repo=vae_repo, latents=latents, views=views
    )
    what = {"standard": "one image", "mini": "one image, the 0.6 B model", "mv": "front/left/back/right views"}[family]
    return [
        member(
            name=base,
            purpose=f"{what}: the reference quality, classifier-free guidance (two DiT sequences per image)",
            steps=30,
            scheduler=FLOW_MATCHING,
            guidance_distilled=False,
            vae=None,
        ),
        member(
            name=f"{base}-fast",
            purpose=f"{what}: guidance distilled, half the DiT work of the base model per step",
            steps=30,
            scheduler=FLOW_MATCHING,
            guidance_distilled=True,
            vae=None,
        ),
        member(
            name=f"{base}-turbo",
            purpose=f"{what}: step distilled, a few steps, paired with the turbo VAE",
            steps=5,
            scheduler=CONSISTENCY,
            guidance_distilled=True,
            vae=vae,
        ),
    ]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        *_family(
            "standard",
            "tencent/Hunyuan3D-2",
            "hunyuan3d-dit-v2-0",
            ("tencent/Hunyuan3D-2", "hunyuan3d-vae-v2-0-turbo"),
            latents=3072,
            views=1,
        ),
        *_family(
            "mini",
            "tencent/Hunyuan3D-2mini",
            "hunyuan3d-dit-v2-mini",
            ("tencent/Hunyuan3D-2mini", "hunyuan3d-vae-v2-mini-turbo"),
            latents=512,
            views=1,
        ),
        *_family(
            "mv",
            "tencent/Hunyuan3D-2mv",
            "hunyuan3d-dit-v2-mv",
            ("tencent/Hunyuan3D-2", "hunyuan3d-vae-v2-0-turbo"),
            latents=3072,
            views=4,
        ),
    ]
}


def get_variant(name: str) -> Variant:
    """The variant called `name`; KeyError naming the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown hunyuan3d model {name!r}; known: {', '.join(VARIANTS)}") from None


@dataclass(frozen=True)
class Weights:
    """The files a variant is loaded from: its config.yaml and checkpoint, and its paired VAE's where it has one."""

    config: Path
    checkpoint: Path
    vae_config: Path | None = None
    vae_checkpoint: Path | None = None


@dataclass(frozen=True)
class Component:
    """Where one folder of weights (a DiT's or a VAE's) was found, or where it must go."""

    repo: str
    folder: str
    found: Path | None  # the folder holding both files, if any
    place: Path  # where the files must go when they are missing (the first place searched)
    searched: tuple[Path, ...]
    missing: tuple[str, ...]  # file names absent from `place` when not found


@dataclass(frozen=True)
class VariantStatus:
    """Whether a variant can run on this machine, for GET /api/generators and the submission check."""

    model: str
    usable: bool
    multiview: bool
    views: int
    steps: int
    guidance_scale: float
    scheduler: str
    vae: str | None
    purpose: str
    folders: tuple[str, ...]  # where its weights are (usable) or must go (not usable)
    missing: tuple[str, ...]  # "<folder>/<file>" for each missing file
    message: str | None  # why it is not usable, naming the files and folders

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_names(file_variant: str | None) -> list[str]:
    """File names a checkpoint may have, preferred first: model.fp16.safetensors, then model.fp16.ckpt."""
    stem = f"model.{file_variant}" if file_variant else "model"
    return [f"{stem}.safetensors", f"{stem}.ckpt"]


def search_dirs(settings: PipelineSettings, repo: str, folder: str, direct: bool = False) -> list[Path]:
    """Where a weights folder (`folder` of hub repository `repo`) is looked for, in order.

    With `hunyuan_model_path` set, only under it: `<path>/<folder>`, `<path>/<repo>/<folder>` and, for a VAE,
    `<path>/../<folder>` (beside a DiT folder named directly); `direct` also accepts `<path>` itself (the default
    model's own folder). Otherwise hy3dgen's layout, `$HY3DGEN_MODELS/<repo>/<folder>` (default ~/.cache/hy3dgen),
    then the Hugging Face hub cache.
    """
    if settings.hunyuan_model_path is not None:
        root = settings.hunyuan_model_path.expanduser()
        dirs = [root] if direct else []
        dirs += [root / folder, root / repo / folder]
        if folder.startswith("hunyuan3d-vae"):
            dirs.append(root.parent / folder)
        return dirs
    base = Path(os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")).expanduser()
    cached = _hub_cache_dir(repo, folder)
    return [base / repo / folder, cached] if cached else [base / repo / folder]


def find_component(settings: PipelineSettings, repo: str, folder: str, direct: bool = False) -> Component:
    """The first searched folder holding config.yaml and a checkpoint, or where they must go."""
    names = checkpoint_names(settings.hunyuan_variant)
    searched = search_dirs(settings, repo, folder, direct)
    for place in searched:
        if (place / "config.yaml").is_file() and any((place / n).is_file() for n in names):
            return Component(repo, folder, place, place, tuple(searched), ())
    # the files go in the model's own folder, not in ORFEAS_HUNYUAN_MODEL_PATH itself
    place = searched[1] if direct and settings.hunyuan_model_path is not None else searched[0]
    missing = tuple(n for n in ("config.yaml", names[0]) if not (place / n).is_file())
    return Component(repo, folder, None, place, tuple(searched), missing)


def components(settings: PipelineSettings, variant: Variant) -> list[Component]:
    """The variant's DiT folder and, where it pairs with one, its VAE's folder."""
    direct = variant.name == settings.hunyuan_model
    found = [find_component(settings, variant.repo, variant.name, direct)]
    if variant.vae is not None:
        found.append(find_component(settings, variant.vae_repo, variant.vae))
    return found


def missing_message(settings: PipelineSettings, variant: Variant, parts: list[Component]) -> str:
    """What is missing for `variant` and where it must go."""
    names = checkpoint_names(settings.hunyuan_variant)
    lines = []
    for part in parts:
        if part.found is None:
            looked = "; ".join(str(d) for d in part.searched)
            if settings.hunyuan_model_path is None:
                looked += f"; the Hugging Face cache{_hub_cache_root()}"
            lines.append(
                f"{', '.join(part.missing)} (or {names[1]}) of {part.repo}/{part.folder} in {part.place} "
                f"(looked in {looked})"
            )
    return (
        f"hunyuan3d model {variant.name} has no weights on this machine: put {'; and '.join(lines)}. "
        "huggingface-cli download fills the Hugging Face cache, or set ORFEAS_HUNYUAN_MODEL_PATH to a folder "
        "holding the model folders; ORFEAS never downloads weights."
    )


def find_weights(settings: PipelineSettings, model: str | None = None) -> Weights:
    """The files to load `model` (default: settings.hunyuan_model) from; GeneratorUnavailable naming each missing
    file and the folder it must go in."""
    variant = get_variant(model or settings.hunyuan_model)
    parts = components(settings, variant)
    folders = [part.found for part in parts if part.found is not None]
    if len(folders) < len(parts):
        raise GeneratorUnavailable(missing_message(settings, variant, parts))
    names = checkpoint_names(settings.hunyuan_variant)

    def checkpoint(folder: Path) -> Path:
        return next(folder / n for n in names if (folder / n).is_file())

    model_dir = folders[0]
    vae_dir = folders[1] if len(folders) > 1 else None
    return Weights(
        config=model_dir / "config.yaml",
        checkpoint=checkpoint(model_dir),
        vae_config=vae_dir / "config.yaml" if vae_dir else None,
        vae_checkpoint=checkpoint(vae_dir) if vae_dir else None,
    )


def variant_status(settings: PipelineSettings) -> list[VariantStatus]:
    """Every variant, usable (weights found) or not (with the files missing and the folders they must go in).

    Reads the file system and the Hugging Face cache's index only; imports neither torch nor hy3dgen.
    """
    statuses = []
    for variant in VARIANTS.values():
        parts = components(settings, variant)
        usable = all(part.found is not None for part in parts)
        statuses.append(
            VariantStatus(
                model=variant.name,
                usable=usable,
                multiview=variant.multiview,
                views=variant.views,
                steps=variant.steps,
                guidance_scale=variant.guidance_scale,
                scheduler=variant.scheduler,
                vae=variant.vae,
                purpose=variant.purpose,
                folders=tuple(str(part.found or part.place) for part in parts),
                missing=tuple(f"{part.place}/{name}" for part in parts for name in part.missing),
                message=None if usable else missing_message(settings, variant, parts),
            )
        )
    return statuses


def _hub_cache_root() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return ""
    return f" {constants.HF_HUB_CACHE}"


def _hub_cache_dir(repo: str, folder: str) -> Path | None:
    """The folder in the Hugging Face hub cache, if its config.yaml is there (reads the cache only)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, f"{folder}/config.yaml")
    return Path(found).parent if isinstance(found, str) else None
