"""Mesh extraction: the zero level set of an implicit field, by marching cubes."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from orfeas.pipeline.generators.base import GridField


def extract_mesh(field: GridField, level: float = 0.0) -> trimesh.Trimesh:
    """Marching cubes on a grid field (negative inside); returns an outward-facing mesh in world units."""
    values = _off_level(field.values, level)
    if not (values.min() < level < values.max()):
        raise ValueError("the field has no surface at this level (all inside or all outside)")
    # scikit-image winds faces so that normals point down the gradient ("descent"): for a field that is negative
    # inside, that is outward
    verts, faces, _normals, _ = marching_cubes(values, level=level, allow_degenerate=True)
    verts = verts * field.spacing + np.asarray(field.origin, dtype=np.float64)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return trimesh.Trimesh(vertices=verts, faces=faces, process=False)


def _off_level(values: np.ndarray, level: float) -> np.ndarray:
    """Nudge samples that sit exactly on the level outward.

    Marching cubes emits zero-area and duplicate triangles where a sample equals the level (common on walls that
    follow grid planes), and those survive decimation as non-manifold edges.
    """
    on_level = values == level
    if not on_level.any():
        return values
    nudged = values.copy()
    nudged[on_level] = level + 1e-6
    return nudged
