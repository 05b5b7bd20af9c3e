"""Write a mesh to GLB, OBJ, STL or PLY files, each format written atomically.

Every format is first encoded in memory as ``{file name: bytes}``, then written under temporary names and
moved into place together, so a reader never sees a half-written model or an OBJ without its MTL and texture.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from orfeas.files import write_files_atomically
from orfeas.pipeline.options import check_format

# glTF bufferView.target values for vertex attributes and triangle indices.
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963

# Stems become file names and OBJ material names, where spaces and path separators would break references.
_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def to_export_frame(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy centred on its bounding-box centre with its longest side 1.0; visuals and UVs are kept."""
    if len(mesh.faces) == 0:
        raise ValueError("cannot frame a mesh without faces")
    longest = float(np.max(mesh.extents))
    if not np.isfinite(longest) or longest <= 0.0:
        raise ValueError(f"cannot frame a mesh whose longest side is {longest}")
    framed = mesh.copy()
    framed.apply_translation(-mesh.bounds.mean(axis=0))
    framed.apply_scale(1.0 / longest)
    return framed


def safe_stem(name: str) -> str:
    """A file stem that export accepts: characters outside letters, digits, '_', '-' and '.' become '_'."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return stem or "model"


def download_name(stem: str, fmt: str) -> str:
    """The file name a result is delivered under: `<stem>.<fmt>`, and for OBJ (sent as a zip with its MTL and
    texture) `<stem>.obj.zip`."""
    return f"{stem}.obj.zip" if fmt == "obj" else f"{stem}.{fmt}"


def export_mesh(mesh: trimesh.Trimesh, out_dir: Path, stem: str, fmt: str) -> list[Path]:
    """Write ``out_dir/<stem>.<fmt>`` (plus an OBJ's MTL and texture) and return the written paths.

    The mesh is written as given; put it in the export frame with `to_export_frame` first.
    """
    encode = _ENCODERS[check_format(fmt)]
    if not _STEM.fullmatch(stem):
        raise ValueError(f"file stem {stem!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    return write_files_atomically(Path(out_dir), encode(mesh, stem))


def glb_files(mesh: trimesh.Trimesh, stem: str) -> dict[str, bytes]:
    """Encode a glTF 2.0 binary with UVs and an embedded PNG base-colour texture, or vertex colours."""
    ready = _with_png_texture(_with_unit_normals(mesh.copy()))
    data = trimesh.exchange.gltf.export_glb(ready, include_normals=True, tree_postprocessor=set_buffer_view_targets)
    return {f"{stem}.glb": data}


def obj_files(mesh: trimesh.Trimesh, stem: str) -> dict[str, bytes]:
    """Encode an OBJ; a textured mesh also gets ``<stem>.mtl`` and ``<stem>_texture.png``."""
    ready = _with_png_texture(_with_unit_normals(mesh.copy()), name=f"{stem}_texture")
    text, companions = trimesh.exchange.obj.export_obj(
        ready,
        include_normals=True,
        include_color=True,
        include_texture=True,
        return_texture=True,
        write_texture=False,
        mtl_name=f"{stem}.mtl",
    )
    # Order: OBJ, MTL, texture; the writer moves them into place in reverse.
    mtl = {name: companions.pop(name) for name in list(companions) if name.endswith(".mtl")}
    return {f"{stem}.obj": text.encode("utf-8"), **mtl, **companions}


def stl_files(mesh: trimesh.Trimesh, stem: str) -> dict[str, bytes]:
    """Encode a binary STL (geometry only)."""
    return {f"{stem}.stl": trimesh.exchange.stl.export_stl(mesh)}


def ply_files(mesh: trimesh.Trimesh, stem: str) -> dict[str, bytes]:
    """Encode a binary PLY with vertex colours; a textured mesh's colours are sampled from its texture."""
    visual = mesh.visual
    textured = isinstance(visual, trimesh.visual.TextureVisuals)
    ready = _with_unit_normals(mesh.copy(include_visual=not textured))
    if isinstance(visual, trimesh.visual.TextureVisuals):
        ready.visual = visual.to_color()
    return {f"{stem}.ply": trimesh.exchange.ply.export_ply(ready, encoding="binary", vertex_normal=True)}


def unit_vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Vertex normals of unit length; vertices without one (unused, or only in degenerate faces) get +Z.

    trimesh leaves those normals at zero, which the glTF validator rejects (ACCESSOR_VECTOR3_NON_UNIT).
    """
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    lengths = np.linalg.norm(normals, axis=1)
    usable = np.isfinite(lengths) & (lengths > 1e-12)
    unit = np.tile([0.0, 0.0, 1.0], (len(normals), 1))
    unit[usable] = normals[usable] / lengths[usable, None]
    return unit


def set_buffer_view_targets(tree: dict[str, Any]) -> None:
    """Mark vertex and index bufferViews of a glTF JSON tree with their GPU target, as the glTF validator recommends.

    trimesh may share one bufferView between accessors with identical bytes; a view claimed by both kinds is
    left without a target, which is valid.
    """
    targets: dict[int, set[int]] = {}
    accessors = tree.get("accessors", [])
    for mesh in tree.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            uses = [(index, ARRAY_BUFFER) for index in primitive.get("attributes", {}).values()]
            if "indices" in primitive:
                uses.append((primitive["indices"], ELEMENT_ARRAY_BUFFER))
            for accessor, target in uses:
                view = accessors[accessor].get("bufferView")
                if view is not None:
                    targets.setdefault(view, set()).add(target)
    views = tree.get("bufferViews", [])
    for view, kinds in targets.items():
        if len(kinds) == 1:
            views[view]["target"] = kinds.pop()


def _with_unit_normals(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Store unit vertex normals on mesh (a copy the caller owns) and return it."""
    # trimesh's cache_decorator builds a property with a setter, which mypy reads as a plain method
    mesh.vertex_normals = unit_vertex_normals(mesh)  # type: ignore[method-assign]
    return mesh


def _with_png_texture(mesh: trimesh.Trimesh, name: str | None = None) -> trimesh.Trimesh:
    """Make mesh's base-colour texture a fresh RGB/RGBA image, so exporters encode it as PNG.

    Optionally rename its material (OBJ names the texture file after it). mesh must be a copy the caller owns.
    """
    material = getattr(mesh.visual, "material", None)
    if material is None:
        return mesh
    for attribute in ("baseColorTexture", "image"):
        image = getattr(material, attribute, None)
        if isinstance(image, Image.Image):
            setattr(material, attribute, _plain_rgb_image(image))
    if name is not None:
        material.name = name
    return mesh


def _plain_rgb_image(image: Image.Image) -> Image.Image:
    """An unencoded RGB or RGBA copy of image (RGBA only when it carries transparency)."""
    transparent = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


_ENCODERS: dict[str, Callable[[trimesh.Trimesh, str], dict[str, bytes]]] = {
    "glb": glb_files,
    "obj": obj_files,
    "stl": stl_files,
    "ply": ply_files,
}
