"""`inflate`: a weight-free generator that turns the object's silhouette and shading into a closed volume.

Depth is not in a single image, so this is a prior, chosen by measurement (docs/BENCHMARKS.md, "3D accuracy"):
objects tend to be about as deep as they are wide, locally. Each point of the silhouette is covered by a largest
inscribed disc; the object's cross-section there is taken to be round with that disc's radius, times `depth`, and
the total thickness is capped at `max_thickness`. A sphere's disc gives back the sphere, a torus seen from above gives
back the torus, a stick stays a thin stick, and holes stay holes. `roundness` blends the round cross-section (1)
with a chamfer that rises linearly from the outline (0). This tube prior is symmetric about z = 0.

Then the image's shading bends it (`pipeline.shading`, weight `shading`): a smooth relief, solved on a coarse grid,
makes the front's Lambert shading match the image; the membrane through the relief at the outline becomes the
mid-surface, so a tilted object tilts its back too, and the back mirrors `back_relief` of the rest of the relief.
A round outline whose front the shading carves into a bowl (a ring or a dish seen obliquely, `shading.outline_tilt`)
is leaned back by the angle the outline's ellipse gives, the way whose shading fits better (weight `tilt`).
The result is a signed field on a grid whose zero level set is the surface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from orfeas.errors import InvalidOptions
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.generators.base import GenerationParams, GridField, Shape
from orfeas.pipeline.shading import (
    estimate_light,
    harmonic_fill,
    luminance,
    outline_tilt,
    shading_relief,
    surface_normals,
)

DEFAULT_OPTIONS = {
    "depth": 1.0,  # depth of the object relative to its local width
    "max_thickness": 0.4,  # cap on the total depth, as a fraction of the cut-out side
    "roundness": 1.0,  # 1: round cross-section, 0: linear chamfer from the outline
    "shading": 1.0,  # weight of the relief recovered from shading (0: none, the symmetric tube prior alone)
    "smoothness": 0.005,  # relief features narrower than about this (cut-out units) are smoothed away
    "back_relief": 0.5,  # 1: the back mirrors the front's relief about the mid-surface, 0: the back keeps none
    "tilt": 1.0,  # weight of the tilt read from a round outline seen obliquely (0: none)
}
# Bounds of each option: (lowest, highest), both included.
OPTION_RANGES = {
    "depth": (0.05, 3.0),
    "max_thickness": (0.01, 2.0),
    "roundness": (0.0, 1.0),
    "shading": (0.0, 2.0),
    "smoothness": (0.003, 1.0),
    "back_relief": (0.0, 1.0),
    "tilt": (0.0, 2.0),
}
# The local-width search runs on at most this many cells across; the width varies smoothly, so finer adds nothing.
LOCAL_RADIUS_GRID = 192
LOCAL_RADIUS_LEVELS = 16
# Shape from shading runs on this many cells across: the relief is smooth, and the solve's cost grows with the area.
SHADING_GRID = 48
# Below this share of the intensity variance explained by the fitted shading the relief is dropped, above the second
# it is kept whole: texture, print or several lights fit badly, one matte light well (docs/BENCHMARKS.md).
SHADING_FIT_NONE = 0.4
SHADING_FIT_FULL = 0.6
# Steepest tilt taken from the outline (about 56 degrees): it keeps the grid within the memory estimate.
MAX_TILT_SLOPE = 1.5
# Share of the inner cells where the upright front must be a bowl (a dip the shading carves, as in a ring whose hole
# its near side hides) for a round outline to count as a ring or a dish seen obliquely; a ball or an egg has none.
MIN_BOWL = 0.01
# Share of the relief kept on a leaned ring: its light, fitted with a prior that is right only in the large, is the
# less sure (the trade-off between synthetic and real tori is in docs/BENCHMARKS.md).
TILTED_RELIEF = 0.5
# A fitted albedo under this many grey levels means the object is evenly lit or evenly coloured.
MIN_ALBEDO = 4.0


def signed_distance_2d(mask: np.ndarray) -> np.ndarray:
    """Signed distance to the mask's outline in pixels: positive inside, negative outside.

    Pixel centres are half a pixel from the outline that runs between an inside and an outside pixel, hence the
    0.5 offsets.
    """
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def local_radius(distance: np.ndarray, levels: int = LOCAL_RADIUS_LEVELS) -> np.ndarray:
    """Radius of the largest disc inside the shape that covers each inside cell (the "local thickness" / 2).

    `distance` is the inside distance to the outline (cells). A disc of radius r centred where distance >= r covers
    everything within r of its centre; radii are tried from the largest down and each cell keeps the first
    (largest) that covers it.
    """
    inside = distance > 0
    radius = np.zeros_like(distance, dtype=np.float32)
    largest = float(distance.max())
    for r in np.linspace(largest, 0.5, levels):
        centres = distance >= r
        if not centres.any():
            continue
        covered = ndimage.distance_transform_edt(~centres) <= r
        radius[covered & inside & (radius == 0)] = r
    radius[inside & (radius == 0)] = 0.5
    return radius


def half_thickness(distance: np.ndarray, radius: np.ndarray, depth: float, roundness: float) -> np.ndarray:
    """Half the object's depth at each cell, from the inside distance and the local radius (same units)."""
    t = np.clip(distance / np.maximum(radius, 1e-9), 0.0, 1.0)
    profile = roundness * np.sqrt(t * (2.0 - t)) + (1.0 - roundness) * t
    return (depth * radius * profile).astype(np.float32)


def height_map(sdf: np.ndarray, options: dict[str, float]) -> np.ndarray:
    """Half-thickness over the grid (world units), from the grid's 2-D signed distance (world units)."""
    cells = sdf.shape[0]
    work = min(cells, LOCAL_RADIUS_GRID)
    coarse = cv2.resize(sdf, (work, work), interpolation=cv2.INTER_AREA) if work < cells else sdf
    radius = local_radius(np.clip(coarse * work, 0.0, None)) / work
    if work < cells:
        radius = cv2.resize(radius, (cells, cells), interpolation=cv2.INTER_LINEAR)
    inside = np.clip(sdf, 0.0, None)
    height = half_thickness(inside, np.maximum(radius, inside), options["depth"], options["roundness"])
    height = np.minimum(height, options["max_thickness"] / 2.0)
    # Parts narrower than a couple of cells (a flamingo's legs) would get a depth marching cubes cannot see and
    # vanish; give everything inside at least a cell of half-thickness. The outline itself still comes from the
    # 2-D distance (see inflate_field), so this does not fatten the silhouette.
    return np.where(sdf > 0, np.maximum(height, 1.0 / cells), height)


def front_and_back(cutout: Cutout, sdf: np.ndarray, options: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Front and back depth over the grid (world units, image layout) from the grid's 2-D signed distance.

    Without shading they are the tube prior's +height and -height. With it, the front gains the relief that
    explains the image's shading; the mid-surface (the membrane through the relief at the outline) carries the
    object's tilt to the back, and the back mirrors `back_relief` of the rest of the relief.
    """
    height = height_map(sdf, options)
    if options["shading"] <= 0:
        return height, -height
    cells = sdf.shape[0]
    work = min(cells, SHADING_GRID)
    mask = cv2.resize(sdf, (work, work), interpolation=cv2.INTER_AREA) > 0
    if mask.sum() < 16:
        return height, -height
    intensity = cv2.resize(luminance(cutout.rgba), (work, work), interpolation=cv2.INTER_AREA)
    spacing = 1.0 / work
    lit = ndimage.binary_erosion(mask)
    prior = cv2.resize(height, (work, work), interpolation=cv2.INTER_AREA)
    light = estimate_light(surface_normals(prior, spacing)[lit], intensity[lit])
    if light.albedo < MIN_ALBEDO:
        return height, -height  # evenly coloured: no shading to read
    relief, fit = shading_relief(prior, intensity, mask, spacing, light, options["smoothness"])
    plane = np.zeros_like(height)
    slope = options["tilt"] * min(outline_tilt(cutout.mask).slope, MAX_TILT_SLOPE)
    if slope > 0 and (_has_hole(sdf > 0) or _bowl(prior + relief, mask) >= MIN_BOWL):
        # A ring or a dish seen obliquely. Left upright, the fitted light absorbs its tilt (and fits a little
        # better for it), so only the two leans compete: the one whose shading is explained better wins.
        leans = []
        for lean in (_tilt_plane(sdf > 0, slope), _tilt_plane(sdf > 0, -slope)):
            tilted = cv2.resize(lean + height, (work, work), interpolation=cv2.INTER_AREA)
            lean_light = estimate_light(surface_normals(tilted, spacing)[lit], intensity[lit])
            lean_relief, lean_fit = shading_relief(tilted, intensity, mask, spacing, lean_light, options["smoothness"])
            leans.append((lean_fit, lean, TILTED_RELIEF * lean_relief))
        fit, plane, relief = max(leans, key=lambda item: item[0])
    # Trust the relief only as far as one light explains the image: texture, print or several lights do not fit
    relief *= options["shading"] * float(
        np.clip((fit - SHADING_FIT_NONE) / (SHADING_FIT_FULL - SHADING_FIT_NONE), 0, 1)
    )
    mid = harmonic_fill(relief, mask)
    # Parts too thin for the coarse grid (a flamingo's legs) take the relief of the nearest solved cell: a jump
    # to zero there would tear them from the body.
    relief, mid = (_extend_nearest(a, mask) for a in (relief, mid))
    relief = cv2.resize(relief, (cells, cells), interpolation=cv2.INTER_LINEAR)
    mid = cv2.resize(mid, (cells, cells), interpolation=cv2.INTER_LINEAR)
    front = plane + height + relief
    back = plane + mid - height - options["back_relief"] * (relief - mid)
    # Never thinner than two cells where the object is (see height_map), and thicker where the relief is steep:
    # neighbouring columns must overlap in depth or a thin part shifted by the relief falls apart into pieces.
    step = np.maximum(_steepness(relief), _steepness(mid))
    back = np.where(sdf > 0, np.minimum(back, front - 2.0 / cells - 2.0 * step), back)
    # Outside the silhouette both close on the middle, as the tube prior's front and back meet at z = 0 there: the
    # 2-D distance then decides where the outline falls between an inside and an outside column.
    centre = (front + back) / 2
    front, back = np.where(sdf > 0, front, centre), np.where(sdf > 0, back, centre)
    return front, back


def _has_hole(mask: np.ndarray) -> bool:
    """Whether the silhouette encloses background (a ring's hole) of more than a hundredth of its area."""
    return bool((ndimage.binary_fill_holes(mask) & ~mask).sum() > 0.01 * mask.sum())


def _bowl(front: np.ndarray, mask: np.ndarray) -> float:
    """Share of the object's inner cells where the front is a bowl (curving away from the camera both ways)."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    gy, gx = np.gradient(front)
    gyy, gyx = np.gradient(gy)
    gxy, gxx = np.gradient(gx)
    bowl = (gxx > 0) & (gyy > 0) & (gxx * gyy - gxy * gyx > 0)
    return float((bowl & inner).sum() / max(inner.sum(), 1))


def _tilt_plane(mask: np.ndarray, slope: float) -> np.ndarray:
    """Depth of a plane that falls by `slope` per unit of image height (a positive slope puts the near side at the
    bottom), zero at the middle height of `mask`."""
    rows = mask.shape[0]
    if slope == 0 or not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    occupied = np.flatnonzero(mask.any(axis=1))
    y = -(np.arange(rows, dtype=np.float32) - (occupied[0] + occupied[-1]) / 2.0) / rows  # world units, up
    return np.broadcast_to((-slope * y)[:, None], mask.shape).astype(np.float32)


def inflate_field(cutout: Cutout, resolution: int, options: dict[str, float]) -> GridField:
    """Build the grid field of one cut-out at `resolution` voxels across the cut-out's side."""
    side = cutout.size
    distance = signed_distance_2d(cutout.mask) / side  # world units: the cut-out spans 1.0
    sdf = cv2.resize(distance, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
    front, back = front_and_back(cutout, sdf, options)
    # image rows run down, world Y runs up; the grid is indexed [x, y, z]
    sdf, front, back = (np.ascontiguousarray(a[::-1, :].T) for a in (sdf, front, back))
    spacing = 1.0 / resolution
    rows, cols = _occupied_range(sdf > 0, pad=2)
    sdf, front, back = sdf[rows, cols], front[rows, cols], back[rows, cols]

    inside = sdf > 0
    z_top = float(front[inside].max()) + 2 * spacing
    z_bottom = float(back[inside].min()) - 2 * spacing
    nz = max(int(np.ceil((z_top - z_bottom) / spacing)) + 1, 3)
    z = (z_bottom + np.arange(nz, dtype=np.float32) * spacing).astype(np.float32)
    values = np.maximum(z[None, None, :] - front[:, :, None], back[:, :, None] - z[None, None, :])
    # Intersect with the silhouette's extrusion: near the outline the profile rises steeply, and marching cubes'
    # linear interpolation would push the surface up to half a cell outward; the 2-D distance has unit slope.
    np.maximum(values, -sdf[:, :, None], out=values)

    start = -0.5 + 0.5 * spacing
    origin = (start + rows.start * spacing, start + cols.start * spacing, float(z[0]))
    return GridField(values=values, origin=origin, spacing=spacing)


def _steepness(values: np.ndarray) -> np.ndarray:
    """Largest change of `values` from a cell to one of its four neighbours."""
    padded = np.pad(values, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    return np.max([np.abs(n - centre) for n in neighbours], axis=0)


def _extend_nearest(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """`values` inside `region`, and outside it the value of the nearest cell of `region`."""
    _, (rows, cols) = ndimage.distance_transform_edt(~region, return_indices=True)
    return values[rows, cols]


def _occupied_range(occupied: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding slices of the True cells, grown by `pad` cells and clipped to the array."""
    xs = np.flatnonzero(occupied.any(axis=1))
    ys = np.flatnonzero(occupied.any(axis=0))
    n_x, n_y = occupied.shape
    return (
        slice(max(xs[0] - pad, 0), min(xs[-1] + pad + 1, n_x)),
        slice(max(ys[0] - pad, 0), min(ys[-1] + pad + 1, n_y)),
    )


def read_options(options: Mapping[str, Any]) -> dict[str, float]:
    """Defaults merged with `options`, each checked against its range; InvalidOptions names the problem."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise InvalidOptions(f"unknown inflate option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
    merged: dict[str, float] = {}
    for name, default in DEFAULT_OPTIONS.items():
        value = options.get(name, default)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InvalidOptions(f"inflate option {name} must be a number, got {value!r}") from None
        low, high = OPTION_RANGES[name]
        if not low <= value <= high:
            raise InvalidOptions(f"inflate option {name} must be in [{low}, {high}], got {value}")
        merged[name] = value
    return merged


class InflateGenerator:
    """Silhouette inflation on the CPU; no weights, well under a second per image."""

    name = "inflate"
    # The outline comes from the 2-D distance field at sub-cell precision, so a coarser grid loses little.
    default_resolution = 192

    def check_options(self, options: dict[str, Any]) -> None:
        read_options(options)

    def generate_batch(self, images: Sequence[Cutout], params: GenerationParams) -> list[Shape]:
        options = read_options(params.options)
        return [inflate_field(image, params.resolution, options) for image in images]

    def memory_per_image(self, params: GenerationParams) -> int:
        # the float32 grid plus marching-cubes output of similar size, on the 0.8 of the cube that a shaded relief
        # or a leaning ring fills at most (the depths seen are in docs/BENCHMARKS.md)
        return int(4 * params.resolution**3 * 0.8 * 2) + 64 * 2**20
