"""Hunyuan3D-2 shape models with random weights, for the tests and the GPU benchmark (no real weights there).

`model_config` writes hy3dgen's config.yaml structure for a variant's full-size architecture (the published numbers
of hunyuan3d-dit-v2-0, -mini, -mv and their -fast and -turbo versions) or a tiny one of the same kind, and
`vae_config` the turbo VAE a -turbo variant pairs with; `save_random_weights` and `save_random_vae` store randomly
initialised models in the layout a user has (config.yaml + model.<variant>.safetensors), so they load through the
same code as the real weights; `random_pipeline` builds one in memory, skipping the disk (3.3 GB at full size).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

TINY = {"width": 32, "heads": 2, "layers": 1, "latents": 64, "channels": 8, "image": 56, "processor": 64}
"""Tiny model: 32-wide transformers with 2 heads and 1 layer, 64 latent tokens of 8 channels, 4 x 4 image patches."""

_DINOV2_GIANT = {
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 1536,
    "image_size": 518,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "mlp_ratio": 4,
    "model_type": "dinov2",
    "num_attention_heads": 24,
    "num_channels": 3,
    "num_hidden_layers": 40,
    "patch_size": 14,
    "qkv_bias": True,
    "use_swiglu_ffn": True,
}

_FULL: dict[str, Any] = {
    "model": {
        "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
        "params": {
            "in_channels": 64,
            "context_in_dim": 1536,
            "hidden_size": 1024,
            "mlp_ratio": 4.0,
            "num_heads": 16,
            "depth": 16,
            "depth_single_blocks": 32,
            "axes_dim": [64],
            "theta": 10000,
            "qkv_bias": True,
            "guidance_embed": False,
        },
    },
    "vae": {
        "target": "hy3dgen.shapegen.models.ShapeVAE",
        "params": {
            "num_latents": 3072,
            "embed_dim": 64,
            "num_freqs": 8,
            "include_pi": False,
            "heads": 16,
            "width": 1024,
            "num_decoder_layers": 16,
            "qkv_bias": False,
            "qk_norm": True,
            "scale_factor": 0.9990943042622529,
        },
    },
    "conditioner": {
        "target": "hy3dgen.shapegen.models.SingleImageEncoder",
        "params": {
            "main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {"config": _DINOV2_GIANT, "image_size": 518, "use_cls_token": True},
            }
        },
    },
    "scheduler": {
        "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
        "params": {"num_train_timesteps": 1000},
    },
    "image_processor": {
        "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
        "params": {"size": 512, "border_ratio": 0.15},
    },
}


# the published turbo VAE's shape decoder (hunyuan3d-vae-v2-0-turbo, -mini-turbo): half as wide, a one-wide MLP,
# no final layer norm; the latent transformer is the base VAE's
_TURBO_DECODER = {"geo_decoder_mlp_expand_ratio": 1, "geo_decoder_downsample_ratio": 2, "geo_decoder_ln_post": False}
_MINI = {"depth": 8, "depth_single_blocks": 16, "num_latents": 512}
_PCM_TIMESTEPS = 100


def model_config(tiny: bool = False, model: str = "hunyuan3d-dit-v2-0") -> dict[str, Any]:
    """hy3dgen's config.yaml contents for a variant: its full-size architecture, or a tiny one of the same kind.

    The family decides the sizes (2mini: 8 + 16 blocks over 512 latents; 2mv: the multi-view conditioner and image
    processor), the speed version the guidance embedding (-fast, -turbo) and the scheduler (-turbo).
    """
    from orfeas.pipeline.generators.hunyuan_variants import CONSISTENCY, SCHEDULERS, get_variant

    variant = get_variant(model)
    config = copy.deepcopy(_FULL)
    dit, vae = config["model"]["params"], config["vae"]["params"]
    dit["guidance_embed"] = variant.guidance_distilled
    if variant.scheduler == CONSISTENCY:
        config["scheduler"] = {
            "target": f"{SCHEDULERS}.{CONSISTENCY}",
            "params": {"num_train_timesteps": 1000, "pcm_timesteps": _PCM_TIMESTEPS},
        }
    if variant.family == "mini":
        dit.update(depth=_MINI["depth"], depth_single_blocks=_MINI["depth_single_blocks"])
        vae["num_latents"] = _MINI["num_latents"]
    if variant.multiview:
        encoder = config["conditioner"]["params"]["main_image_encoder"]
        encoder["type"] = "DinoImageEncoderMV"
        encoder["kwargs"]["view_num"] = variant.views
        config["image_processor"]["target"] = "hy3dgen.shapegen.preprocessors.MVImageProcessorV2"
    if tiny:
        _shrink(config, latents=TINY["latents"] // (2 if variant.family == "mini" else 1))
    return config


def vae_config(tiny: bool = False, model: str = "hunyuan3d-dit-v2-0-turbo") -> dict[str, Any]:
    """config.yaml of the turbo VAE the variant pairs with (its base VAE with the turbo shape decoder)."""
    vae = model_config(tiny, model)["vae"]
    vae["params"].update(_TURBO_DECODER)
    if tiny:  # the turbo decoder halves the heads; FlashVDM's top-k selection needs at least two
        vae["params"]["heads"] = 2 * TINY["heads"]
    return vae


def _shrink(config: dict[str, Any], latents: int) -> None:
    """Tiny sizes of the same architecture, in place."""
    t = TINY
    config["model"]["params"].update(
        in_channels=t["channels"],
        context_in_dim=t["width"],
        hidden_size=t["width"],
        num_heads=t["heads"],
        depth=t["layers"],
        depth_single_blocks=t["layers"],
        axes_dim=[t["width"] // t["heads"]],
    )
    config["vae"]["params"].update(
        num_latents=latents,
        embed_dim=t["channels"],
        num_freqs=4,
        heads=t["heads"],
        width=t["width"],
        num_decoder_layers=t["layers"],
    )
    encoder = config["conditioner"]["params"]["main_image_encoder"]["kwargs"]
    encoder["config"].update(
        hidden_size=t["width"], num_attention_heads=t["heads"], num_hidden_layers=t["layers"], image_size=t["image"]
    )
    encoder["image_size"] = t["image"]
    config["image_processor"]["params"]["size"] = t["processor"]


def random_components(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The pipeline's components built from `config` with random weights (seeded)."""
    import torch
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    torch.manual_seed(seed)
    return {name: instantiate_from_config(config[name]) for name in _FULL}


def random_pipeline(config: dict[str, Any], device: str, dtype: Any, seed: int = 0) -> Any:
    """A Hunyuan3DDiTFlowMatchingPipeline with random weights, built in memory."""
    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline

    return Hunyuan3DDiTFlowMatchingPipeline(**random_components(config, seed), device=device, dtype=dtype)


def save_random_weights(folder: Path, config: dict[str, Any], variant: str | None = "fp16", seed: int = 0) -> Path:
    """Write config.yaml and model[.variant].safetensors of a random model into `folder`; returns the checkpoint.

    The checkpoint's keys are "<component>.<parameter>" for model, vae and conditioner, as hy3dgen reads them.
    """
    import yaml
    from safetensors.torch import save_file

    components = random_components(config, seed)
    tensors = {
        f"{name}.{key}": value.detach().clone().contiguous()  # clone: shared tensors cannot be saved
        for name in ("model", "vae", "conditioner")
        for key, value in components[name].state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    checkpoint = folder / (f"model.{variant}.safetensors" if variant else "model.safetensors")
    save_file(tensors, str(checkpoint))
    return checkpoint


def save_random_vae(folder: Path, config: dict[str, Any], variant: str | None = "fp16", seed: int = 0) -> Path:
    """Write a separate VAE's config.yaml and model[.variant].safetensors (keys without a prefix, as hy3dgen's
    `ShapeVAE.from_single_file` reads them) into `folder`; returns the checkpoint."""
    import torch
    import yaml
    from hy3dgen.shapegen.pipelines import instantiate_from_config
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = instantiate_from_config(config)
    tensors = {key: value.detach().clone().contiguous() for key, value in vae.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    checkpoint = folder / (f"model.{variant}.safetensors" if variant else "model.safetensors")
    save_file(tensors, str(checkpoint))
    return checkpoint


def save_random_variant(root: Path, model: str, tiny: bool = True, seed: int = 0) -> Path:
    """A random `model` in hy3dgen's layout under `root` ($HY3DGEN_MODELS): <repo>/<model>/ and, for a -turbo
    variant, its turbo VAE's <repo>/<vae>/; returns the model's folder."""
    from orfeas.pipeline.generators.hunyuan_variants import get_variant

    variant = get_variant(model)
    folder = root / variant.repo / variant.name
    save_random_weights(folder, model_config(tiny, model), seed=seed)
    if variant.vae is not None:
        save_random_vae(root / variant.vae_repo / variant.vae, vae_config(tiny, model), seed=seed + 1)
    return folder
