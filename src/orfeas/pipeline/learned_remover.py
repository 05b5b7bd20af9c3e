"""A learned background remover: an ONNX segmentation model already on disk, run with onnxruntime.

Plugs into `remove_background` through the `BackgroundRemover` protocol. The models rembg keeps in `~/.u2net/`
(u2net, u2netp, isnet-general-use) and BiRefNet exports each want their own input size and normalisation
(`FAMILIES`); the family is read from the file name. Nothing is ever downloaded: without a model file the
weight-free remover (`background.segment_studio_background`) is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.background import BackgroundRemover
from orfeas.pipeline.settings import PipelineSettings


@dataclass(frozen=True)
class Family:
    """How one family of models wants its input: side of the square it sees, per-channel mean and spread (after
    scaling the image so its brightest value is 1, as rembg does), and whether its output is a logit."""

    name: str
    side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logits: bool


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FAMILIES = {
    "u2netp": Family("u2netp", 320, IMAGENET_MEAN, IMAGENET_STD, logits=False),
    "u2net": Family("u2net", 320, IMAGENET_MEAN, IMAGENET_STD, logits=False),
    "isnet": Family("isnet", 1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), logits=False),
    "birefnet": Family("birefnet", 1024, IMAGENET_MEAN, IMAGENET_STD, logits=True),
}
# Files looked for in $U2NET_HOME when no model is configured, in this order (rembg's names).
DEFAULT_MODEL_FILES = ("u2net.onnx", "u2netp.onnx", "isnet-general-use.onnx")


def model_family(path: Path) -> Family:
    """The family of a model file, from its name (u2netp before u2net: one name contains the other)."""
    name = path.name.lower()
    for key, family in FAMILIES.items():
        if key in name:
            return family
    raise GeneratorUnavailable(
        f"background model {path.name}: cannot tell its family from the name; expected one of "
        f"{', '.join(FAMILIES)} in the file name (rembg's u2net.onnx, u2netp.onnx, isnet-general-use.onnx, "
        "or a BiRefNet export)"
    )


def find_background_model(settings: PipelineSettings, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The ONNX model to use: `settings.background_model`, else the first of rembg's files in $U2NET_HOME
    (default ~/.u2net), else none. `background_model = none` always means the weight-free remover."""
    configured = settings.background_model
    if configured is not None:
        if str(configured).lower() == "none":
            return None
        path = configured.expanduser()
        if not path.is_file():
            raise GeneratorUnavailable(f"background model {path} (ORFEAS_BACKGROUND_MODEL) is not a file")
        return path
    home = Path(environ.get("U2NET_HOME", "~/.u2net")).expanduser()
    if not home.is_dir():
        return None
    for name in DEFAULT_MODEL_FILES:
        if (home / name).is_file():
            return home / name
    birefnet = sorted(p for p in home.glob("*.onnx") if "birefnet" in p.name.lower())
    return birefnet[0] if birefnet else None


class OnnxRemover:
    """A BackgroundRemover that runs an ONNX segmentation model (one image per run, on the CPU unless onnxruntime
    has a GPU provider)."""

    def __init__(self, path: Path, family: Family | None = None):
        import onnxruntime

        self.path = Path(path)
        self.family = family or model_family(self.path)
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise GeneratorUnavailable(f"background model {self.path} cannot be loaded: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    @property
    def name(self) -> str:
        return f"onnx:{self.family.name}"

    def __call__(self, rgba: np.ndarray) -> np.ndarray:
        """(H, W) float32 opacity in [0, 1] for an (H, W, 3 or 4) uint8 image."""
        height, width = rgba.shape[:2]
        batch = self.preprocess(rgba)
        prediction = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
        return self.postprocess(prediction, (height, width))

    def preprocess(self, rgba: np.ndarray) -> np.ndarray:
        """The model's (1, 3, side, side) float32 input, normalised as its family was trained."""
        side = self.family.side
        rgb = cv2.resize(rgba[..., :3], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        rgb /= max(float(rgb.max()), 1e-6)
        mean, std = (np.asarray(values, dtype=np.float32) for values in (self.family.mean, self.family.std))
        rgb = (rgb - mean) / std
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])

    def postprocess(self, prediction: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The first output map, squashed to [0, 1] (sigmoid for logits, then min-max, as rembg), at `shape`."""
        saliency = prediction.reshape(prediction.shape[-2:]) if prediction.ndim >= 2 else prediction
        if self.family.logits:
            saliency = 1.0 / (1.0 + np.exp(-saliency))
        low, high = float(saliency.min()), float(saliency.max())
        saliency = (saliency - low) / (high - low) if high > low else np.zeros_like(saliency)
        return cv2.resize(saliency, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def create_remover(settings: PipelineSettings, environ: Mapping[str, str] = os.environ) -> BackgroundRemover | None:
    """The learned remover the settings point at, or None for the weight-free one; build it once and reuse it."""
    path = find_background_model(settings, environ)
    return None if path is None else OnnxRemover(path)


def remover_name(settings: PipelineSettings, environ: Mapping[str, str] = os.environ) -> str:
    """Which remover images without an alpha mask go through, without loading it (for /api/generators)."""
    path = find_background_model(settings, environ)
    if path is None:
        return "grabcut (weight-free)"
    return f"onnx:{model_family(path).name} ({path.name})"
