"""How far can a depth prior go? Scores of meshes built from the *true* depth of the ground-truth shapes.

    .venv/bin/python bench/depth_oracle.py

An upper bound for the inflate family, not a generator: rays cast through the ground-truth mesh give its front and
back depth at each pixel, and the same field construction and pipeline as `inflate` turn them into a mesh, scored
like bench/accuracy_bench.py. Rows:
- true front and back: the whole visible-hull depth (what a perfect single-view model could give)
- true thickness, symmetric: the real thickness at every pixel, centred on z = 0 as the tube prior does
- true front, back mirrored about the outline's membrane: the back is the front reflected about the harmonic
  surface through the true depths at the outline (what `inflate` does with its shading-derived front, back_relief=1)
- true front, tube thickness: the back is the front minus the tube prior's thickness
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np
import trimesh
from scipy import ndimage

from accuracy_bench import GT, load_scorer
from orfeas import GenerateOptions, Settings, generate, save_result
from orfeas.pipeline.generators.base import GridField
from orfeas.pipeline.generators.inflate import height_map, read_options, signed_distance_2d
from orfeas.pipeline.shading import harmonic_fill

RAYS = 128  # rays per side of the image
MARGIN = 0.05  # the ground-truth renders leave this margin around the object (gt/README.md)


def true_depth(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Front (largest z) and back (smallest z) of the mesh along rays from +Z, image layout, NaN where missed."""
    span = 1.0 / (1.0 - 2 * MARGIN)
    coords = (np.arange(RAYS) + 0.5) / RAYS * span - span / 2
    x, y = np.meshgrid(coords, -coords)
    origins = np.column_stack([x.ravel(), y.ravel(), np.full(x.size, 10.0)])
    directions = np.tile([0.0, 0.0, -1.0], (x.size, 1))
    hits, ray_index, _ = mesh.ray.intersects_location(origins, directions, multiple_hits=True)
    front = np.full(x.size, -np.inf)
    back = np.full(x.size, np.inf)
    np.maximum.at(front, ray_index, hits[:, 2])
    np.minimum.at(back, ray_index, hits[:, 2])
    missed = ~np.isfinite(front)
    front[missed], back[missed] = np.nan, np.nan
    return front.reshape(RAYS, RAYS), back.reshape(RAYS, RAYS)


class DepthMapGenerator:
    """Builds the field from given front/back depth maps, exactly as inflate builds it from its height map."""

    name = "depth-oracle"
    default_resolution = 192

    def __init__(self, front: np.ndarray, back: np.ndarray):
        # ground-truth units (longest side 1) to cut-out units (longest side 1 - 2 * margin)
        self.front = np.nan_to_num(front) * (1 - 2 * MARGIN)
        self.back = np.nan_to_num(back) * (1 - 2 * MARGIN)

    def generate_batch(self, images, params):
        return [self._field(image, params.resolution) for image in images]

    def memory_per_image(self, params) -> int:
        return 0

    def _field(self, cutout, resolution: int) -> GridField:
        grid = (resolution, resolution)
        sdf = cv2.resize(signed_distance_2d(cutout.mask) / cutout.size, grid, interpolation=cv2.INTER_LINEAR)
        front = cv2.resize(self.front.astype(np.float32), grid, interpolation=cv2.INTER_LINEAR)
        back = cv2.resize(self.back.astype(np.float32), grid, interpolation=cv2.INTER_LINEAR)
        sdf, front, back = (np.ascontiguousarray(a[::-1].T) for a in (sdf, front, back))
        spacing = 1.0 / resolution
        z_half = max(np.abs(front).max(), np.abs(back).max()) + 2 * spacing
        nz = int(np.ceil(2 * z_half / spacing)) + 1
        z = ((np.arange(nz) - (nz - 1) / 2) * spacing).astype(np.float32)
        values = np.maximum(z[None, None, :] - front[:, :, None], back[:, :, None] - z[None, None, :])
        values = np.maximum(values, -sdf[:, :, None])
        start = -0.5 + 0.5 * spacing
        return GridField(values.astype(np.float32), (start, start, float(z[0])), spacing)


def mirrored_about_outline(front: np.ndarray, back: np.ndarray) -> np.ndarray:
    """The front reflected about the membrane through the object's depth at its outline (NaN off the object)."""
    seen = np.isfinite(front)
    outline = seen & ~ndimage.binary_erosion(seen)
    depth = np.where(outline, (front + back) / 2, 0.0).astype(np.float32)
    mid = np.where(outline, depth, harmonic_fill(depth, seen & ~outline))
    return np.where(seen, np.minimum(2 * mid - front, front), np.nan)


def tube_thickness(image: Path) -> np.ndarray:
    """Total thickness of the tube prior (inflate's silhouette-only depth) at each ray, in ground-truth units."""
    rgba = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    sdf = signed_distance_2d(rgba[..., 3] >= 128) / rgba.shape[0]
    sdf = cv2.resize(sdf, (RAYS, RAYS), interpolation=cv2.INTER_LINEAR)
    return 2 * np.maximum(height_map(sdf, read_options({"shading": 0})), 0) / (1 - 2 * MARGIN)


def main() -> None:
    scorer = load_scorer()
    variants = {
        "true front and back": lambda f, b, t: (f, b),
        "true thickness, symmetric": lambda f, b, t: ((f - b) / 2, (b - f) / 2),
        "true front, back mirrored about the outline's membrane": lambda f, b, t: (f, mirrored_about_outline(f, b)),
        "true front, tube thickness": lambda f, b, t: (f, f - t),
    }
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for image in sorted((GT / "images").glob("*.png")):
            truth = scorer.load(GT / "placed" / f"{image.stem}.ply")
            front, back = true_depth(truth)
            thickness = tube_thickness(image)
            for name, make in variants.items():
                generator = DepthMapGenerator(*make(front, back, thickness))
                result = generate(image, GenerateOptions(), Settings().pipeline(), generator)
                glb = save_result(result, Path(tmp), image.stem)[0]
                results[name].append(scorer.scores(truth, scorer.normalise(scorer.load(glb))))
    print("| depth given to the mesher | Chamfer | F@0.05 | F@0.1 |\n|---|---|---|---|")
    for name, rows in results.items():
        mean = {key: statistics.mean(row[key] for row in rows) for key in rows[0]}
        print(f"| {name} | {mean['chamfer']:.4f} | {mean['fscore@0.05']:.3f} | {mean['fscore@0.1']:.3f} |")


if __name__ == "__main__":
    main()
