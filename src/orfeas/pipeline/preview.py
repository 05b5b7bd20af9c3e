"""A small software renderer for previews and thumbnails: no GPU, no OpenGL, no browser.

Triangles are drawn back to front (painter's algorithm) with flat Lambert shading and the base colour sampled at
each triangle's centre, which is plenty for a thumbnail of a closed mesh.
"""

from __future__ import annotations

import cv2
import numpy as np
import trimesh
from trimesh.visual import ColorVisuals, TextureVisuals

# Fixed-point bits for cv2's sub-pixel rasterisation.
_SHIFT = 4


def render_preview(
    mesh: trimesh.Trimesh,
    size: int = 512,
    yaw_degrees: float = -30.0,
    pitch_degrees: float = 15.0,
    background: tuple[int, int, int] = (245, 245, 245),
) -> np.ndarray:
    """An (size, size, 3) uint8 RGB picture of the mesh turned by `yaw` about Y and tilted by `pitch` about X."""
    rotation = _rotation(yaw_degrees, pitch_degrees)
    vertices = (mesh.vertices - mesh.bounds.mean(axis=0)) @ rotation.T
    triangles = vertices[mesh.faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    visible = (normals[:, 2] > 0) & (lengths > 0)

    light = np.array([-0.4, 0.6, 1.0]) / np.linalg.norm([-0.4, 0.6, 1.0])
    shade = 0.35 + 0.65 * np.clip(normals[visible] @ light / lengths[visible], 0.0, 1.0)
    colors = face_base_colors(mesh)[visible] * shade[:, None]

    scale = 0.9 * size / max(float(np.ptp(vertices[:, :2], axis=0).max()), 1e-9)
    pixels = np.empty((int(visible.sum()), 3, 2))
    pixels[..., 0] = triangles[visible][..., 0] * scale + size / 2
    pixels[..., 1] = size / 2 - triangles[visible][..., 1] * scale
    order = np.argsort(triangles[visible][..., 2].mean(axis=1))  # far to near

    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = background
    points = np.round(pixels * (1 << _SHIFT)).astype(np.int32)
    for index in order:
        cv2.fillConvexPoly(image, points[index], colors[index].tolist(), lineType=cv2.LINE_AA, shift=_SHIFT)
    return image


def face_base_colors(mesh: trimesh.Trimesh) -> np.ndarray:
    """Float RGB (0-255) per face: texture at the face's centre UV, vertex colours, or a neutral gray."""
    visual = mesh.visual
    base_color = getattr(visual.material, "baseColorTexture", None) if isinstance(visual, TextureVisuals) else None
    if isinstance(visual, TextureVisuals) and visual.kind == "texture" and base_color is not None:
        texture = np.asarray(base_color.convert("RGB"), dtype=np.float64)
        uv = visual.uv[mesh.faces].mean(axis=1)
        height, width = texture.shape[:2]
        cols = np.clip((uv[:, 0] * width).astype(int), 0, width - 1)
        rows = np.clip(((1.0 - uv[:, 1]) * height).astype(int), 0, height - 1)
        return texture[rows, cols]
    if isinstance(visual, ColorVisuals) and visual.kind == "vertex":
        return visual.vertex_colors[mesh.faces][..., :3].mean(axis=1).astype(np.float64)
    return np.full((len(mesh.faces), 3), 180.0)


def _rotation(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    yaw, pitch = np.radians(yaw_degrees), np.radians(pitch_degrees)
    about_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    about_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    return about_x @ about_y
