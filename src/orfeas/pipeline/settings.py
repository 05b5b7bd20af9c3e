"""What the pipeline needs to know about the machine: image bounds, model files, the device.

The server and the CLI build it from their `Settings` (`Settings.pipeline()`, which reads ORFEAS_* variables);
a library caller passes one or takes the defaults, which read no environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PipelineFields(BaseModel):
    """Machine-level choices of the pipeline and its generators (per-request ones are in `GenerateOptions`);
    `orfeas.config.Settings` declares them through this class, so each is declared once."""

    max_image_pixels: int = Field(
        40_000_000, description="Refuse images with more pixels than this (decompression-bomb guard)."
    )
    image_size: int = Field(512, description="Side of the square cut-out handed to generators, in pixels.")
    crop_margin: float = Field(0.05, description="Margin around the object in the cut-out, as a fraction.")
    background_model: Path | None = Field(
        None,
        description="ONNX background remover (rembg's u2net, u2netp, isnet-general-use or a BiRefNet export); unset: "
        "the first of those in $U2NET_HOME (default ~/.u2net), else the weight-free remover; 'none': always the "
        "weight-free one. Never downloaded.",
    )
    generators: dict[str, str] = Field(
        default_factory=dict,
        description='Extra generators as {"name": "module:factory"}; factory(settings) returns a Generator.',
    )

    device: str = Field(
        "auto", description="'auto', 'cpu' or 'cuda:N': where models run and whose memory sizes batches."
    )

    # hunyuan3d generator (optional extra orfeas[hunyuan]; pipeline/generators/hunyuan.py)
    hunyuan_model: str = Field(
        "hunyuan3d-dit-v2-0",
        description="Default Hunyuan3D-2 variant (per request: option 'model'): hunyuan3d-dit-v2-0, -v2-0-fast, "
        "-v2-0-turbo, hunyuan3d-dit-v2-mini, -mini-fast, -mini-turbo, hunyuan3d-dit-v2-mv, -mv-fast, -mv-turbo.",
    )
    hunyuan_model_path: Path | None = Field(
        None,
        description="Folder with the shape model's config.yaml and checkpoint (or with <subfolder>/ holding them); "
        "unset: $HY3DGEN_MODELS/<repo>/<subfolder> (default ~/.cache/hy3dgen), then the Hugging Face cache. "
        "Weights are never downloaded.",
    )
    hunyuan_variant: str | None = Field(
        "fp16", description="Checkpoint model.<variant>.safetensors (or .ckpt); empty for model.safetensors."
    )
    hunyuan_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights and activations; auto: float16 on a GPU, float32 on the CPU."
    )
    hunyuan_steps: int | None = Field(
        None,
        ge=1,
        le=200,
        description="Diffusion steps for all models (request option 'steps'); unset: each model's own default.",
    )
    hunyuan_guidance_scale: float | None = Field(
        None,
        ge=1.0,
        le=30.0,
        description="Guidance for all models (request option 'guidance_scale'); unset: each model's own default.",
    )
    hunyuan_octree_resolution: int = Field(
        384, ge=32, le=1024, description="Default decoding grid cells across [-1.01, 1.01] (request 'resolution')."
    )
    hunyuan_decoder: Literal["dense", "hierarchical", "flashvdm"] = Field(
        "hierarchical", description="Volume decoding: every grid point, ours near the surface, or hy3dgen's FlashVDM."
    )
    hunyuan_chunk_size: int = Field(8000, ge=1, description="Points per shape-decoder call.")
    hunyuan_compile: bool = Field(
        False, description="torch.compile the DiT, VAE and image encoder once loaded: a slow first batch, then faster."
    )


class PipelineSettings(PipelineFields):
    """The pipeline's settings as a value: frozen, and a field it does not know is refused, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
