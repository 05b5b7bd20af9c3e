"""Synthetic inputs for tests: masks and cut-outs whose geometry is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orfeas.pipeline.background import Cutout

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"
EXAMPLES = REPO / "examples"


def disc_mask(size: int = 256, radius: float = 0.4, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boolean mask of a disc; radius and centre in cut-out units (the cut-out spans [-0.5, 0.5])."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    x = coords[None, :]
    y = -coords[:, None]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2


def cutout_from_mask(mask: np.ndarray, color: tuple[int, int, int] = (200, 60, 40)) -> Cutout:
    """A cut-out whose object is `mask`, painted one colour (a left-right gradient in the red channel)."""
    size = mask.shape[0]
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., 0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    rgba[..., 1] = color[1]
    rgba[..., 2] = color[2]
    rgba[..., 3] = np.where(mask, 255, 0)
    rgba[~mask, :3] = 0
    return Cutout(rgba=rgba, method="test")


def example_images() -> list[Path]:
    return sorted(EXAMPLES.glob("*.png"))
