"""`hunyuan3d`: Tencent's Hunyuan3D-2 shape model (the `hy3dgen` package) as a batched generator.

The model is a flow-matching diffusion transformer (DiT) conditioned on DINOv2 image features, whose latents a shape
VAE turns into a neural field. `generate_batch` runs the conditioner and the DiT on the whole batch, one forward
pass per step (hy3dgen's sampler concatenates the images and the classifier-free-guidance copies), with each
image's initial noise drawn from its own seeded generator, so a batch gives what its images give one by one. Each
image's latents are then decoded through `pipeline.extract.extract_neural_field` (dense or hierarchical) or through
hy3dgen's FlashVDM decoder.

Every variant of the family (`hunyuan_variants`: standard, 2mini, 2mv, each as base, -fast and -turbo) runs through
the same code, chosen per request with the option `model`; a multi-view model receives a mapping of view name to
cut-out per item instead of a cut-out. Weights are only ever read from disk: `find_weights` checks the configured
places first and says where the files must go, because hy3dgen's own `from_pretrained` downloads from the hub when
its local path is missing. hy3dgen and its torch stack are imported only when the weights are loaded (the optional
extra `orfeas[hunyuan]`). On the CPU the model runs in bfloat16 where the CPU has native bfloat16 products, with
one torch thread per core of the worker.

Frame: the model's shapes fill [-1, 1]^3 with Y up and the image's camera on +Z, our world frame, with X to the
image's right. That is read from hy3dgen's texture stage, which renders the input's view from +Z; it is not yet
checked against real weights (the tests run random ones).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import trimesh

from orfeas.errors import GeneratorUnavailable, InvalidOptions, WeightsMissing
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.extract import extract_neural_field, torch_field
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.hunyuan_variants import VARIANTS, Variant, find_weights, get_variant
from orfeas.pipeline.settings import PipelineSettings
from orfeas.pipeline.views import batch_views, check_view_names, ordered_views

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INSTALL = "pip install 'orfeas[hunyuan]' && pip install --no-deps hy3dgen==2.0.2"
REQUIRED_MODULES = ("hy3dgen", "torch", "torchvision", "diffusers", "transformers", "einops", "pymeshlab")
Decoder = Literal["dense", "hierarchical", "flashvdm"]
DECODERS: tuple[Decoder, ...] = get_args(Decoder)
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


def build(settings: PipelineSettings) -> HunyuanGenerator:
    """The generator, if its packages are installed and the default model is a known variant (the weights load on
    first use)."""
    check_installed()
    if settings.hunyuan_model not in VARIANTS:
        raise GeneratorUnavailable(
            f"ORFEAS_HUNYUAN_MODEL={settings.hunyuan_model!r} is not a Hunyuan3D-2 variant; "
            f"known: {', '.join(VARIANTS)}"
        )
    return HunyuanGenerator(settings)


class _HubConstants(Protocol):
    """What hub_offline uses of `huggingface_hub.constants`."""

    HF_HUB_OFFLINE: bool


class _HubOffline:
    """huggingface_hub's offline switch, on while any model load runs: the first load to start turns it on, the
    last to end puts back what it was (loads in several threads overlap safely)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._before = False

    def hold(self, constants: _HubConstants) -> None:
        with self._lock:
            if self._holders == 0:
                self._before = constants.HF_HUB_OFFLINE
                constants.HF_HUB_OFFLINE = True
            self._holders += 1

    def release(self, constants: _HubConstants) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                constants.HF_HUB_OFFLINE = self._before


_HUB_OFFLINE = _HubOffline()


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Keep huggingface_hub and transformers off the network while the model is built.

    Both ask `huggingface_hub.constants.HF_HUB_OFFLINE` when they would fetch (transformers through
    `huggingface_hub.is_offline_mode`), so the flag is set there and never in os.environ, which other threads
    read and which is not safe to change while they run. Without huggingface_hub nothing can reach the hub.
    """
    constants = _hub_constants()
    if constants is None:
        yield
        return
    _HUB_OFFLINE.hold(constants)
    try:
        yield
    finally:
        _HUB_OFFLINE.release(constants)


def _hub_constants() -> _HubConstants | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants


def resolve_device(device: str) -> str:
    """The device to run on: "auto" becomes the first GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX-512 BF16 or AMX, through oneDNN)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype of a dtype setting; "auto" is float16 on a GPU (as the published weights), bfloat16 on a CPU
    with native bfloat16 products, and float32 on other CPUs, where half-precision kernels are slow or missing."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def worker_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which taskset and container cpusets set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_worker_cores() -> int:
    """Give torch one thread per core of this worker (its default may count the host's cores); returns the count."""
    import torch

    cores = worker_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def load_pipeline(
    settings: PipelineSettings, device: str | None = None, dtype: torch.dtype | None = None, model: str | None = None
) -> Any:
    """Build hy3dgen's `Hunyuan3DDiTFlowMatchingPipeline` for `model` (default: settings.hunyuan_model) from the
    weights `find_weights` finds, offline; a -turbo variant's turbo VAE replaces the one in its checkpoint."""
    check_installed()
    variant = get_variant(model or settings.hunyuan_model)
    weights = find_weights(settings, variant.name)
    device = device or resolve_device(settings.device)
    dtype = dtype or resolve_dtype(settings.hunyuan_dtype, device)
    threads = use_worker_cores() if device == "cpu" else None
    start = time.perf_counter()
    with hub_offline():
        try:
            from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline
            from hy3dgen.shapegen.models import ShapeVAE
        except (ImportError, RuntimeError) as exc:  # torchvision built for another torch fails with RuntimeError
            raise GeneratorUnavailable(f"hunyuan3d cannot import hy3dgen ({exc}); reinstall with {INSTALL}") from None
        try:
            # hy3dgen's from_single_file without its float32 random initialisation (hunyuan_loading)
            from orfeas.pipeline.generators.hunyuan_loading import pipeline_from_file, vae_from_file

            pipeline = pipeline_from_file(
                Hunyuan3DDiTFlowMatchingPipeline,
                str(weights.checkpoint),
                str(weights.config),
                device=device,
                dtype=dtype,
                use_safetensors=weights.checkpoint.suffix == ".safetensors",
            )
            if weights.vae_config is not None and weights.vae_checkpoint is not None:
                pipeline.vae = vae_from_file(
                    ShapeVAE,
                    str(weights.vae_checkpoint),
                    str(weights.vae_config),
                    device=device,
                    dtype=dtype,
                    use_safetensors=weights.vae_checkpoint.suffix == ".safetensors",
                )
        except (OSError, KeyError, RuntimeError) as exc:  # a hub model absent from the cache, mismatched weights
            raise GeneratorUnavailable(f"hunyuan3d cannot build {variant.name} from {weights.config}: {exc}") from None
    scheduler = type(pipeline.scheduler).__name__
    if scheduler != variant.scheduler:
        logger.warning(
            "hunyuan3d config names another scheduler than the published variant",
            extra={"model": variant.name, "scheduler": scheduler, "published": variant.scheduler},
        )
    if settings.hunyuan_compile:
        pipeline.compile()  # hy3dgen's: torch.compile on the DiT, the VAE and the conditioner
    logger.info(
        "hunyuan3d loaded",
        extra={
            "model": variant.name,
            "checkpoint": str(weights.checkpoint),
            "vae": str(weights.vae_checkpoint or weights.checkpoint),
            "scheduler": scheduler,
            "device": device,
            "dtype": str(dtype),
            "threads": threads,
            "compiled": settings.hunyuan_compile,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return pipeline


def read_options(options: dict[str, Any], settings: PipelineSettings) -> dict[str, Any]:
    """Per-request options over the defaults: model, steps, guidance_scale, decoder; InvalidOptions if bad.

    Steps and guidance default to the chosen variant's published values (5 steps for a -turbo variant, 30
    otherwise), unless the settings' hunyuan_steps or hunyuan_guidance_scale (ORFEAS_HUNYUAN_STEPS,
    ORFEAS_HUNYUAN_GUIDANCE_SCALE) are set, which then apply to all.
    """
    unknown = sorted(set(options) - {"model", "steps", "guidance_scale", "decoder"})
    if unknown:
        raise InvalidOptions(
            f"unknown hunyuan3d options {unknown}; accepted: ['decoder', 'guidance_scale', 'model', 'steps']"
        )
    model = options.get("model", settings.hunyuan_model)
    if not isinstance(model, str) or model not in VARIANTS:
        raise InvalidOptions(f"model must be one of {', '.join(VARIANTS)}, got {model!r}")
    variant = VARIANTS[model]
    steps, guidance = settings.hunyuan_steps, settings.hunyuan_guidance_scale
    defaults = {
        "model": model,
        "steps": variant.steps if steps is None else steps,
        "guidance_scale": variant.guidance_scale if guidance is None else guidance,
        "decoder": settings.hunyuan_decoder,
    }
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


def check_views(variant: Variant, views: Sequence[str]) -> None:
    """InvalidOptions when the input's kind does not suit the model: views for a single-image model, one image for
    a multi-view one, or bad view names."""
    if variant.multiview and not views:
        raise InvalidOptions(
            f"model {variant.name} takes views (front required; left, back, right), not a single image"
        )
    if not variant.multiview and views:
        multiview = ", ".join(v.name for v in VARIANTS.values() if v.multiview)
        raise InvalidOptions(f"model {variant.name} takes one image, not views; multi-view models: {multiview}")
    if views:
        check_view_names(views)


class HunyuanGenerator:
    """Hunyuan3D-2 shape generation for every variant of the family.

    A variant's weights load on the first batch that asks for it and stay until a batch asks for another variant:
    one model is held at a time, so memory stays that of the largest one used.
    """

    name = "hunyuan3d"

    def __init__(self, settings: PipelineSettings, pipeline: Any = None) -> None:
        self.settings = settings
        self.default_resolution = settings.hunyuan_octree_resolution
        self._loaded: tuple[str, Any] | None = (settings.hunyuan_model, pipeline) if pipeline is not None else None

    @property
    def pipeline(self) -> Any:
        """The default variant's pipeline (loaded on first use)."""
        return self.pipeline_for(self.settings.hunyuan_model)

    def pipeline_for(self, model: str) -> Any:
        """The pipeline of `model`, loading it (and dropping the one held before) when it is not the one held."""
        if self._loaded is None or self._loaded[0] != model:
            self._loaded = None  # release the previous model before the next one is read
            self._loaded = (model, load_pipeline(self.settings, model=model))
        return self._loaded[1]

    def check_options(self, options: dict[str, Any]) -> None:
        """InvalidOptions for bad options, and for a variant whose weights are not on this machine (the message
        names the missing files and their folder)."""
        model = read_options(options, self.settings)["model"]
        try:
            find_weights(self.settings, model)
        except GeneratorUnavailable as exc:
            raise WeightsMissing(str(exc)) from None

    def check_views(self, options: dict[str, Any], views: Sequence[str]) -> None:
        """InvalidOptions when `views` (() for a single image) do not suit the model the options choose."""
        check_views(VARIANTS[read_options(options, self.settings)["model"]], views)

    def generate_batch(
        self, images: Sequence[Cutout | Mapping[str, Cutout]], params: GenerationParams
    ) -> list[trimesh.Trimesh]:
        """One mesh per item: a cut-out, or for a multi-view model a mapping of view name to cut-out."""
        options = read_options(params.options, self.settings)
        variant = VARIANTS[options["model"]]
        if not images:
            return []
        check_views(variant, batch_views(images))
        pipeline = self.pipeline_for(variant.name)
        seeds = [params.seed_for(i) for i in range(len(images))]
        start = time.perf_counter()
        latents = sample_latents(
            pipeline, images, seeds, options["steps"], options["guidance_scale"], on_step=params.check_stop
        )
        sampled = time.perf_counter()
        meshes = []
        for latent in latents:
            params.check_stop()
            meshes.append(
                decode_latents(
                    pipeline, latent[None], params.resolution, options["decoder"], self.settings.hunyuan_chunk_size
                )
            )
        logger.info(
            "hunyuan3d batch",
            extra={
                "model": variant.name,
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
        """Working memory one more image adds to a batch of the chosen variant (the weights are shared).

        The DiT runs one sequence per image for a guidance-distilled variant (-fast, -turbo) and two otherwise
        (conditional and unconditional), each of latent tokens (3072, or 512 for 2mini) plus image tokens (one
        view's, or four for 2mv), and the conditioner one per view; on the CPU, attention is computed with its
        full score matrix. Decoding runs one image at a time, so it does not grow with the batch. An estimate
        from the architecture; bench/cpu_hunyuan.py and bench/gpu_hunyuan.py record it beside measured peaks.
        """
        model = params.options.get("model", self.settings.hunyuan_model)
        variant = VARIANTS.get(model, VARIANTS.get(self.settings.hunyuan_model, VARIANTS["hunyuan3d-dit-v2-0"]))
        size = self._size(variant)
        device = resolve_device(self.settings.device)
        name = self.settings.hunyuan_dtype
        if name == "auto":  # torch is asked only when the CPU's bfloat16 support decides
            bytes_per = 2 if device.startswith("cuda") else resolve_dtype(name, device).itemsize
        else:
            bytes_per = {"float16": 2, "bfloat16": 2, "float32": 4}[name]
        copies = 1 if variant.guidance_distilled else 2
        cond_tokens = size["cond_tokens"] * variant.views
        tokens = size["latents"] + cond_tokens
        dit = copies * tokens * size["hidden"] * ACTIVATION_WIDTH * bytes_per
        conditioner = cond_tokens * size["cond_hidden"] * ACTIVATION_WIDTH * bytes_per
        scores = 0 if device.startswith("cuda") else copies * tokens**2 * size["heads"] * 4
        return int(dit + conditioner + scores + size["latents"] * size["hidden"] * 4)

    def _size(self, variant: Variant) -> dict[str, int]:
        """Sizes of the held model when it is `variant`, else the variant's published full-size ones."""
        if self._loaded is None or self._loaded[0] != variant.name:
            return {**FULL_SIZE, "latents": variant.latents}
        pipeline = self._loaded[1]
        model, vae = pipeline.model, pipeline.vae
        encoder = pipeline.conditioner.main_image_encoder
        return {
            "latents": vae.latent_shape[0],
            "hidden": model.hidden_size,
            "heads": model.num_heads,
            "cond_tokens": encoder.num_patches,
            "cond_hidden": encoder.model.config.hidden_size,
        }


def sample_latents(
    pipeline: Any,
    images: Sequence[Cutout | Mapping[str, Cutout]],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Latents (N, latents, channels) for N items: hy3dgen's sampler (the scheduler its config names) over the
    whole batch, the conditioner once and the DiT once per step for all items; `on_step()` is called after each
    step (it may raise to stop the sampling, as GenerationParams.check_stop does).

    An item is a cut-out, or a mapping of view name to cut-out for a multi-view model (hy3dgen's multi-view image
    processor sorts the views into the order of their view embeddings). Each item's initial noise comes from its
    own CPU generator seeded with its seed (hy3dgen draws a list of generators item by item), so it does not depend
    on the batch it travels in or on the device.
    """
    import torch
    from PIL import Image

    def picture(cutout: Cutout) -> Image.Image:
        return Image.fromarray(cutout.rgba, mode="RGBA")

    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    pictures = [
        {name: picture(view) for name, view in ordered_views(item).items()}
        if isinstance(item, Mapping)
        else picture(item)
        for item in images
    ]
    return pipeline(
        image=pictures,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="latent",
        enable_pbar=False,
        callback=(lambda _step, _t, _out: on_step()) if on_step is not None else None,
        callback_steps=1,
    )


def decode_latents(
    pipeline: Any, latents: torch.Tensor, resolution: int, decoder: Decoder, chunk_size: int
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
    # float32: hy3dgen's marching cubes goes through numpy, which has no bfloat16
    output = vae.surface_extractor(logits.float(), mc_level=0.0, bounds=BOX, octree_resolution=resolution)[0]
    if output is None:
        raise ValueError("the decoded field has no surface")
    return export_to_trimesh(output)
