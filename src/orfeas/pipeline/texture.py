"""Texture: colours from the input image, projected along the camera axis.

Every vertex takes the pixel straight in front of it (UV = its X/Y in the cut-out), so the front shows the input's
pixels at full sharpness with no unwrap. The back receives the same pixels, which seen from behind is the mirror
image of the front: a fair guess for most objects, and wrong for ones whose back differs (a face, a logo). Side
walls take the colour at the outline. Background pixels of the texture are filled with the nearest object colour so
that sampling at the outline never picks up the background.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from orfeas.pipeline.background import Cutout


def fill_background(cutout: Cutout) -> np.ndarray:
    """RGB of the cut-out with every background pixel replaced by its nearest object pixel."""
    mask = cutout.mask
    rgb = cutout.rgba[..., :3]
    if mask.all():
        return rgb.copy()
    _, (rows, cols) = ndimage.distance_transform_edt(~mask, return_indices=True)
    return rgb[rows, cols]


def projected_uv(mesh: trimesh.Trimesh) -> np.ndarray:
    """UV of each vertex by projection along Z; the cut-out spans [-0.5, 0.5] in X and Y (V up, as OpenGL)."""
    return np.clip(mesh.vertices[:, :2] + 0.5, 0.0, 1.0)


def apply_texture(mesh: trimesh.Trimesh, cutout: Cutout) -> trimesh.Trimesh:
    """Give the mesh UVs and a PBR material whose base colour is the filled cut-out."""
    image = Image.fromarray(fill_background(cutout), mode="RGB")
    material = trimesh.visual.material.PBRMaterial(
        name="orfeas",
        baseColorTexture=image,
        metallicFactor=0.0,
        roughnessFactor=0.9,
    )
    mesh.visual = trimesh.visual.TextureVisuals(uv=projected_uv(mesh), material=material)
    return mesh


def apply_vertex_colors(mesh: trimesh.Trimesh, cutout: Cutout) -> trimesh.Trimesh:
    """Colour each vertex with the cut-out pixel in front of it (the untextured output)."""
    rgb = fill_background(cutout)
    size = cutout.size
    uv = projected_uv(mesh)
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    alpha = np.full((len(uv), 1), 255, dtype=np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.hstack([rgb[rows, cols], alpha]))
    return mesh
