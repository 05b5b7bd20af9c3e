"""Synthetic inputs for tests: masks and cut-outs whose geometry is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

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


# A light from the upper right, in front of the object (x right, y up, z to the camera), as in ../shared/gt/.
LIGHT = (0.45, 0.55, 0.7)


def shaded_render(
    mesh: trimesh.Trimesh,
    size: int = 128,
    light: tuple[float, float, float] = LIGHT,
    albedo: float = 180.0,
    ambient: float = 50.0,
) -> tuple[Cutout, np.ndarray]:
    """An orthographic Lambert render of `mesh` (which must fit in [-0.5, 0.5]) seen from +Z, as a gray cut-out,
    and the mesh's true front depth per pixel (NaN off the object), both in image layout.

    Intensity = ambient + albedo * max(0, n . light) with the hit faces' normals: one matte albedo, one distant light.
    """
    coords = (np.arange(size) + 0.5) / size - 0.5
    x, y = np.meshgrid(coords, -coords)
    origins = np.column_stack([x.ravel(), y.ravel(), np.full(x.size, 10.0)])
    directions = np.tile([0.0, 0.0, -1.0], (x.size, 1))
    faces, rays, points = mesh.ray.intersects_id(origins, directions, multiple_hits=False, return_locations=True)
    direction = np.asarray(light, dtype=float) / np.linalg.norm(light)
    intensity = np.zeros(x.size)
    intensity[rays] = ambient + albedo * np.maximum(mesh.face_normals[faces] @ direction, 0.0)
    front = np.full(x.size, np.nan)
    front[rays] = points[:, 2]
    hit = np.zeros(x.size, dtype=bool)
    hit[rays] = True
    rgba = np.zeros((size * size, 4), dtype=np.uint8)
    rgba[:, :3] = np.clip(intensity, 0, 255).round()[:, None]
    rgba[:, 3] = np.where(hit, 255, 0)
    return Cutout(rgba=rgba.reshape(size, size, 4), method="test"), front.reshape(size, size)


def example_images() -> list[Path]:
    return sorted(EXAMPLES.glob("*.png"))
