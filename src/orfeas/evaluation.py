"""Mesh-quality measures for tests and benchmarks: how well a mesh's silhouette matches the object mask."""

from __future__ import annotations

import cv2
import numpy as np
import trimesh
from scipy.spatial import cKDTree

# Sub-pixel precision for cv2 rasterisation: coordinates are fixed-point with this many fractional bits.
_SHIFT = 4


def render_silhouette(mesh: trimesh.Trimesh, size: int, margin: float = 0.0) -> np.ndarray:
    """Orthographic silhouette seen from +Z as a bool (size, size) array, row 0 at the top (max Y).

    The mesh's XY bounding box is centred in the image, its longest side spanning ``size * (1 - 2 * margin)``
    pixels.
    """
    if size <= 0 or not 0.0 <= margin < 0.5:
        raise ValueError(f"need size > 0 and 0 <= margin < 0.5, got size={size}, margin={margin}")
    image = np.zeros((size, size), dtype=np.uint8)
    if len(mesh.faces) == 0:
        return image.astype(bool)
    xy = np.asarray(mesh.vertices, dtype=np.float64)[:, :2]
    used = xy[np.unique(mesh.faces)]
    low, high = used.min(axis=0), used.max(axis=0)
    longest = float(np.max(high - low))
    scale = size * (1.0 - 2.0 * margin) / longest if longest > 0 else 0.0
    # OpenCV puts pixel centres at integer coordinates, so the image spans [-0.5, size - 0.5].
    centre = (size - 1) / 2.0
    columns = (xy[:, 0] - (low[0] + high[0]) / 2.0) * scale + centre
    rows = centre - (xy[:, 1] - (low[1] + high[1]) / 2.0) * scale
    pixels = np.round(np.column_stack([columns, rows]) * (1 << _SHIFT)).astype(np.int32)
    # One fillPoly call over all triangles would use the even-odd rule and cancel where front and back faces
    # overlap, so each triangle is filled on its own.
    for triangle in pixels[mesh.faces]:
        cv2.fillConvexPoly(image, triangle, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return image.astype(bool)


def crop_to_bbox(mask: np.ndarray) -> np.ndarray:
    """The smallest rectangle of mask holding all its true pixels; raises ValueError when there are none."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("mask is empty")
    return mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def silhouette_iou(mesh: trimesh.Trimesh, mask: np.ndarray, size: int = 256) -> float:
    """IoU between the mesh's silhouette from the input view and the input's object mask.

    Both are cropped to their bounding boxes and resized to size x size, so the score measures shape, not
    placement or scale. A mesh with no visible faces scores 0; an empty mask raises ValueError.
    """
    reference = _resize_mask(crop_to_bbox(mask), size)
    silhouette = render_silhouette(mesh, 2 * size, margin=0.02)
    if not silhouette.any():
        return 0.0
    rendered = _resize_mask(crop_to_bbox(silhouette), size)
    union = np.logical_or(reference, rendered).sum()
    return float(np.logical_and(reference, rendered).sum() / union)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool mask to size x size by area averaging, keeping pixels at least half covered."""
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return resized >= 0.5


def surface_scores(
    reference: trimesh.Trimesh,
    candidate: trimesh.Trimesh,
    samples: int = 20_000,
    thresholds: tuple[float, ...] = (0.05, 0.1),
    seed: int = 0,
) -> dict[str, float]:
    """Chamfer distance (mean of both mean nearest-surface distances) and F-score at each threshold.

    Points are sampled on both surfaces; precision is the share of candidate points near the reference, recall
    the share of reference points near the candidate. The meshes are compared where they are (no alignment).
    """
    rng = np.random.default_rng(seed)
    ref_points = trimesh.sample.sample_surface(reference, samples, seed=rng)[0]
    cand_points = trimesh.sample.sample_surface(candidate, samples, seed=rng)[0]
    to_candidate = np.asarray(cKDTree(cand_points).query(ref_points)[0])
    to_reference = np.asarray(cKDTree(ref_points).query(cand_points)[0])
    scores = {"chamfer": float((to_candidate.mean() + to_reference.mean()) / 2)}
    for t in thresholds:
        precision, recall = (to_reference < t).mean(), (to_candidate < t).mean()
        scores[f"fscore@{t}"] = float(2 * precision * recall / max(precision + recall, 1e-12))
    return scores
