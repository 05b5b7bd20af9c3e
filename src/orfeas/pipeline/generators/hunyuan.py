"""`hunyuan3d`: Tencent's Hunyuan3D-2 shape model (the `hy3dgen` package) as a batched generator.

The model is a flow-matching diffusion transformer (DiT) conditioned on DINOv2 image features, whose latents a shape
VAE turns into a neural field. `generate_batch` runs the conditioner and the DiT on the whole batch, one forward
pass per step (hy3dgen's sampler concatenates the images and the classifier-free-guidance copies), with each
image's initial noise drawn from its own seeded generator, so a batch gives what its images give one by one. Each
image's latents are then decoded through `pipeline.extract.extract_neural_field` (dense or hierarchical) or through
hy3dgen's FlashVDM decoder.

Weights are only ever read from disk: `find_weights` checks the configured places first and says where the files
must go, because hy3dgen's own `from_pretrained` downloads from the hub when its local path is missing. hy3dgen and
its torch stack are imported only when the weights are loaded (the optional extra `orfeas[hunyuan]`).

Frame: the model's shapes fill [-1, 1]^3 with Y up and the image's camera on +Z, our world frame, with X to the
image's right. That is read from hy3dgen's texture stage, which renders the input's view from +Z; it is not yet
checked against real weights (the tests run random ones).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trimesh

from orfeas.config import Settings
from orfeas.errors import GeneratorUnavailable, InvalidOptions
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.extract import extract_neural_field, torch_field
from orfeas.pipeline.generators.base import GenerationParams

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INSTALL = "pip install 'orfeas[hunyuan]' && pip install --no-deps hy3dgen==2.0.2"
REQUIRED_MODULES = ("hy3dgen", "torch", "torchvision", "diffusers", "transformers", "einops", "pymeshlab")
DECODERS = ("dense", "hierarchical", "flashvdm")
BOX = 1.01
"""Half side of the decoded cube: hy3dgen's default `box_v`; shapes are normalised to [-1, 1]^3 in training."""
# guidance 1 is the conditional prediction alone; at 0 only the unconditional one is left and the image is ignored
OPTION_RANGES = {"steps": (1, 200), "guidance_scale": (1.0, 30.0)}

# Full-size Hunyuan3D-2 (hunyuan3d-dit-v2-0's config.yaml), for memory estimates before the weights are loaded.
FULL_SIZE = {"latents": 3072, "hidden": 1024, "heads": 16, "cond_tokens": 1 + (518 // 14) ** 2, "cond_hidden": 1536}
# Live activations of one transformer block per token, in units of the hidden size: a single-stream block's fused
# qkv + MLP projection is (3 + 4) wide, plus its input, attention output and modulated copy.
ACTIVATION_WIDTH = 10


def missing_modules() -> list[str]:
    """The modules the generator needs that this Python cannot find (without importing them)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def check_installed() -> None:
    """Raise GeneratorUnavailable naming the missing modules and the install command."""
    missing = missing_modules()
    if missing:
        raise GeneratorUnavailable(f"hunyuan3d needs {', '.join(missing)}: install the optional extra with {INSTALL}")


def build(settings: Settings) -> HunyuanGenerator:
    """The generator, if its packages are installed (the weights load on first use)."""
    check_installed()
    return HunyuanGenerator(settings)


@dataclass(frozen=True)
class Weights:
    """The two files a Hunyuan3D-2 shape model is loaded from."""

    config: Path
    checkpoint: Path


def checkpoint_names(variant: str | None) -> list[str]:
    """File names a checkpoint may have, preferred first: model.fp16.safetensors, then model.fp16.ckpt."""
    stem = f"model.{variant}" if variant else "model"
    return [f"{stem}.safetensors", f"{stem}.ckpt"]


def weight_dirs(settings: Settings) -> list[Path]:
    """Where the model's folder (config.yaml + checkpoint) is looked for, in order.

    With `hunyuan_model_path` set, only there: the folder itself or its `<subfolder>/`. Otherwise hy3dgen's own
    layout, `$HY3DGEN_MODELS/<repo>/<subfolder>` (default ~/.cache/hy3dgen), then the Hugging Face hub cache.
    """
    subfolder = settings.hunyuan_subfolder
    if settings.hunyuan_model_path is not None:
        root = settings.hunyuan_model_path.expanduser()
        return [root, root / subfolder]
    base = Path(os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")).expanduser()
    dirs = [base / settings.hunyuan_repo / subfolder]
    cached = _hub_cache_dir(settings.hunyuan_repo, subfolder)
    return [*dirs, cached] if cached else dirs


def find_weights(settings: Settings) -> Weights:
    """The config and checkpoint to load; GeneratorUnavailable saying where they must go when absent."""
    names = checkpoint_names(settings.hunyuan_variant)
    searched = weight_dirs(settings)
    for folder in searched:
        config = folder / "config.yaml"
        checkpoint = next((folder / n for n in names if (folder / n).is_file()), None)
        if config.is_file() and checkpoint is not None:
            return Weights(config, checkpoint)
    places = "; ".join(str(d) for d in searched)
    if settings.hunyuan_model_path is None:
        places += f"; the Hugging Face cache{_hub_cache_root()}"
    raise GeneratorUnavailable(
        f"Hunyuan3D-2 weights not found (looked in {places}). Put config.yaml and {names[0]} (or {names[1]}) of "
        f"{settings.hunyuan_repo}/{settings.hunyuan_subfolder} in the first of those folders (huggingface-cli "
        "download fills the cache), or set ORFEAS_HUNYUAN_MODEL_PATH to the folder that holds them; ORFEAS never "
        "downloads weights."
    )


def _hub_cache_root() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return ""
    return f" {constants.HF_HUB_CACHE}"


def _hub_cache_dir(repo: str, subfolder: str) -> Path | None:
    """The model's folder in the Hugging Face hub cache, if config.yaml is there (reads the cache only)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, f"{subfolder}/config.yaml")
    return Path(found).parent if isinstance(found, str) else None


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Keep huggingface_hub and transformers off the network while the model is built.

    Both read HF_HUB_OFFLINE when first imported, so the flag is set in the environment (for a first import) and in
    huggingface_hub's constants (for an earlier one), and put back afterwards.
    """
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    constants = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants
    previous = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def resolve_device(device: str) -> str:
    """The device to run on: "auto" becomes the first GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype of a dtype setting; "auto" is float16 on a GPU (as the published weights) and float32 on the
    CPU, where half-precision kernels are slow or missing."""
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_pipeline(settings: Settings, device: str | None = None, dtype: torch.dtype | None = None) -> Any:
    """Build hy3dgen's `Hunyuan3DDiTFlowMatchingPipeline` from the weights `find_weights` finds, offline."""
    check_installed()
    weights = find_weights(settings)
    device = device or resolve_device(settings.device)
    dtype = dtype or resolve_dtype(settings.hunyuan_dtype, device)
    start = time.perf_counter()
    with hub_offline():
        try:
            from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline
        except (ImportError, RuntimeError) as exc:  # torchvision built for another torch fails with RuntimeError
            raise GeneratorUnavailable(f"hunyuan3d cannot import hy3dgen ({exc}); reinstall with {INSTALL}") from None
        try:
            pipeline = Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
                str(weights.checkpoint),
                str(weights.config),
                device=device,
                dtype=dtype,
                use_safetensors=weights.checkpoint.suffix == ".safetensors",
            )
        except (OSError, KeyError) as exc:  # e.g. a config naming a hub model that is not in the local cache
            raise GeneratorUnavailable(f"hunyuan3d cannot build the model of {weights.config}: {exc}") from None
    if settings.hunyuan_compile:
        pipeline.compile()  # hy3dgen's: torch.compile on the DiT, the VAE and the conditioner
    logger.info(
        "hunyuan3d loaded",
        extra={
            "checkpoint": str(weights.checkpoint),
            "device": device,
            "dtype": str(dtype),
            "compiled": settings.hunyuan_compile,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return pipeline


def read_options(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Per-request options over the settings' defaults: steps, guidance_scale, decoder; InvalidOptions if bad."""
    defaults = {
        "steps": settings.hunyuan_steps,
        "guidance_scale": settings.hunyuan_guidance_scale,
        "decoder": settings.hunyuan_decoder,
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise InvalidOptions(f"unknown hunyuan3d options {unknown}; accepted: {sorted(defaults)}")
    merged = {**defaults, **options}
    if merged["decoder"] not in DECODERS:
        raise InvalidOptions(f"decoder must be one of {', '.join(DECODERS)}, got {merged['decoder']!r}")
    for key, (low, high) in OPTION_RANGES.items():
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise InvalidOptions(f"{key} must be a number in [{low}, {high}], got {value!r}")
    if merged["steps"] != int(merged["steps"]):
        raise InvalidOptions(f"steps must be a whole number, got {merged['steps']!r}")
    merged["steps"] = int(merged["steps"])
    return merged


class HunyuanGenerator:
    """Hunyuan3D-2 shape generation; the weights load on first use and stay for the generator's lifetime."""

    name = "hunyuan3d"

    def __init__(self, settings: Settings, pipeline: Any = None) -> None:
        self.settings = settings
        self.default_resolution = settings.hunyuan_octree_resolution
        self._pipeline = pipeline

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            self._pipeline = load_pipeline(self.settings)
        return self._pipeline

    def check_options(self, options: dict[str, Any]) -> None:
        read_options(options, self.settings)

    def generate_batch(self, images: Sequence[Cutout], params: GenerationParams) -> list[trimesh.Trimesh]:
        options = read_options(params.options, self.settings)
        if not images:
            return []
        seeds = [params.seed_for(i) for i in range(len(images))]
        start = time.perf_counter()
        latents = sample_latents(self.pipeline, images, seeds, options["steps"], options["guidance_scale"])
        sampled = time.perf_counter()
        meshes = [
            decode_latents(
                self.pipeline, latent[None], params.resolution, options["decoder"], self.settings.hunyuan_chunk_size
            )
            for latent in latents
        ]
        logger.info(
            "hunyuan3d batch",
            extra={
                "batch_size": len(images),
                "steps": options["steps"],
                "decoder": options["decoder"],
                "resolution": params.resolution,
                "diffusion_seconds": round(sampled - start, 2),
                "decoding_seconds": round(time.perf_counter() - sampled, 2),
            },
        )
        return meshes

    def memory_per_image(self, params: GenerationParams) -> int:
        """Working memory one more image adds to a batch (the weights, about 5 GB in float16, are shared).

        The DiT runs two sequences per image (conditional and unconditional) of latent plus image tokens, and the
        conditioner one; on the CPU, attention is computed with its full score matrix. Decoding runs one image at
        a time, so it does not grow with the batch. An estimate from the architecture; bench/gpu_hunyuan.py
        records it beside the measured peak, which no GPU run has checked yet.
        """
        size = self._size()
        device = resolve_device(self.settings.device)
        dtype = self.settings.hunyuan_dtype
        half = dtype in ("float16", "bfloat16") or (dtype == "auto" and device.startswith("cuda"))
        bytes_per = 2 if half else 4
        tokens = size["latents"] + size["cond_tokens"]
        dit = 2 * tokens * size["hidden"] * ACTIVATION_WIDTH * bytes_per
        conditioner = size["cond_tokens"] * size["cond_hidden"] * ACTIVATION_WIDTH * bytes_per
        scores = 0 if device.startswith("cuda") else 2 * tokens**2 * size["heads"] * 4
        return int(dit + conditioner + scores + size["latents"] * size["hidden"] * 4)

    def _size(self) -> dict[str, int]:
        if self._pipeline is None:
            return FULL_SIZE
        model, vae = self._pipeline.model, self._pipeline.vae
        encoder = self._pipeline.conditioner.main_image_encoder
        return {
            "latents": vae.latent_shape[0],
            "hidden": model.hidden_size,
            "heads": model.num_heads,
            "cond_tokens": encoder.num_patches,
            "cond_hidden": encoder.model.config.hidden_size,
        }


def sample_latents(
    pipeline: Any, images: Sequence[Cutout], seeds: Sequence[int], steps: int, guidance_scale: float
) -> torch.Tensor:
    """Latents (N, latents, channels) for N cut-outs: hy3dgen's flow-matching sampler over the whole batch.

    Each image's initial noise comes from its own CPU generator seeded with its seed (hy3dgen draws a list of
    generators image by image), so it does not depend on the batch it travels in or on the device.
    """
    import torch
    from PIL import Image

    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    pictures = [Image.fromarray(image.rgba, mode="RGBA") for image in images]
    return pipeline(
        image=pictures,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="latent",
        enable_pbar=False,
    )


def decode_latents(
    pipeline: Any, latents: torch.Tensor, resolution: int, decoder: str, chunk_size: int
) -> trimesh.Trimesh:
    """The mesh of one image's latents (1, latents, channels) on a resolution^3 grid over [-BOX, BOX]^3."""
    import torch

    vae = pipeline.vae
    with torch.inference_mode():
        tokens = vae(latents / vae.scale_factor)
    if decoder == "flashvdm":
        return _decode_flashvdm(vae, tokens, resolution, chunk_size)

    def field(points: torch.Tensor) -> torch.Tensor:
        # the decoder's logits are positive inside; our fields are negative inside
        with torch.inference_mode():
            return -vae.geo_decoder(queries=points[None], latents=tokens)[0, :, 0]

    # Points stay float32 whatever the model's dtype: the decoder's Fourier features reach 2^7 x the coordinate,
    # and float16 coordinates (about 1e-3 apart near 1) would shift them by up to 0.13 rad; the features are cast
    # to the model's dtype after that product.
    mesh, stats = extract_neural_field(
        torch_field(field, device=str(tokens.device)),
        ((-BOX,) * 3, (BOX,) * 3),
        resolution,
        method=decoder,
        chunk_size=chunk_size,
    )
    logger.debug("hunyuan3d decoded", extra={"method": decoder, "queries": stats.queries, "seconds": stats.seconds})
    return mesh


def _decode_flashvdm(vae: Any, tokens: torch.Tensor, resolution: int, chunk_size: int) -> trimesh.Trimesh:
    """hy3dgen's FlashVDM path: its own hierarchical decoding with attention restricted to the top latents.

    It rounds the grid to a multiple of 4 less one (384 -> 380) but its surface extractor scales by the requested
    resolution: a uniform scale and shift, which the export frame removes.
    """
    from hy3dgen.shapegen.models.autoencoders import FlashVDMVolumeDecoding
    from hy3dgen.shapegen.models.autoencoders.attention_processors import CrossAttentionProcessor
    from hy3dgen.shapegen.pipelines import export_to_trimesh

    try:
        logits = FlashVDMVolumeDecoding()(
            tokens,
            vae.geo_decoder,
            bounds=BOX,
            num_chunks=chunk_size,
            octree_resolution=resolution,
            mc_level=0.0,
            enable_pbar=False,
        )
    finally:
        # FlashVDM leaves its processor on the decoder; put the plain one back for dense and hierarchical decoding
        # (hy3dgen's set_default_cross_attention_processor installs the class, not an instance, and then fails)
        vae.geo_decoder.set_cross_attention_processor(CrossAttentionProcessor())
    output = vae.surface_extractor(logits, mc_level=0.0, bounds=BOX, octree_resolution=resolution)[0]
    if output is None:
        raise ValueError("the decoded field has no surface")
    return export_to_trimesh(output)
