"""Mesh extraction: the zero level set of an implicit field, by marching cubes.

Two inputs are supported: a field already sampled on a grid (`extract_mesh`), and a field that can be queried at
arbitrary points, such as a neural shape decoder (`extract_neural_field`). The latter either samples every grid point
(the dense baseline) or refines a coarse grid only near the surface, which needs a small fraction of the queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from orfeas.pipeline.generators.base import GridField

if TYPE_CHECKING:
    import torch

FieldFunction = Callable[[np.ndarray], np.ndarray]
"""A batched implicit field: points (N, 3) float32 in world units in, values (N,) out, negative inside."""

Bounds = tuple[tuple[float, float, float], tuple[float, float, float]]

# The 8 corners of a unit cell, as integer offsets.
_CORNERS = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), axis=-1).reshape(-1, 3)
# _REACH[c, o]: the farthest distance from corner c of a cell to its child at corner o, over that from corner o
# itself (sqrt(3) half-cells): 1, sqrt(2), sqrt(3) or 2 as c and o differ along 0 to 3 axes.
_REACH = np.sqrt(((1 + (_CORNERS[:, None, :] != _CORNERS[None, :, :])) ** 2).sum(axis=-1) / 3).astype(np.float32)
# (axis, step to the neighbour, bits of the 4 corners on that face) for the 6 faces of a cell (see `_inside_bits`).
_FACES = [
    (axis, 2 * side - 1, np.uint8(sum(1 << int(c) for c in np.flatnonzero(_CORNERS[:, axis] == side))))
    for axis in range(3)
    for side in (0, 1)
]
BAND = 0.87
"""The default refinement band in cells (`_children_near_surface`): sqrt(3)/2, exact for a true distance field.
Where a fitted SDF is not quite a distance the band misses cells that hold surface, but `_close_surface` follows
the surface into them, so a wider band buys nothing there; it only guards small separate parts of such a field."""
NO_SURFACE = "the field has no surface at this level (all inside or all outside)"


@dataclass
class ExtractionStats:
    """What an extraction cost: field queries, calls to the field, wall time and the part of it spent inside the
    field (and the coarse grid it started from)."""

    queries: int = 0
    chunks: int = 0
    seconds: float = 0.0
    field_seconds: float = 0.0
    method: str = ""
    resolution: int = 0
    coarse_resolution: int = 0


def extract_mesh(field: GridField, level: float = 0.0) -> trimesh.Trimesh:
    """Marching cubes on a grid field (negative inside); returns an outward-facing mesh in world units."""
    values = _off_level(field.values, level)
    return _mesh_from_values(values, np.asarray(field.origin, dtype=np.float64), field.spacing, level)


def torch_field(module: Callable[..., Any], device: str = "cpu", dtype: torch.dtype | None = None) -> FieldFunction:
    """Wrap a torch module or function (points tensor (N, 3) -> values (N,) or (N, 1)) as a numpy field function.

    Each chunk is moved to `device` and evaluated under `torch.no_grad()`; torch is imported only here.
    """
    import torch

    dtype = dtype or torch.float32

    def evaluate(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            values = module(torch.as_tensor(points, dtype=dtype, device=device))
        return values.reshape(-1).float().cpu().numpy()

    return evaluate


def extract_neural_field(
    field: FieldFunction,
    bounds: Bounds,
    resolution: int,
    method: Literal["dense", "hierarchical"] = "hierarchical",
    chunk_size: int = 8000,
    level: float = 0.0,
    coarse_resolution: int | None = None,
    band: float = BAND,
) -> tuple[trimesh.Trimesh, ExtractionStats]:
    """Mesh the level set of a queryable field on a (resolution + 1)^3 grid spanning `bounds`.

    Args:
        field: points (N, 3) float32 numpy, in world units, to N values, negative inside; `torch_field` wraps a
            torch module or function (on any device) as one. It is called with 1 to `chunk_size` points at a time.
        bounds: ((x0, y0, z0), (x1, y1, z1)), the box the grid spans, hi > lo on every axis.
        resolution: cells per axis of the finest grid.
        method: `dense` queries every grid point (what a shape decoder does by default); `hierarchical` queries a
            (coarse_resolution + 1)^3 grid and then, level by level, halves only the cells that may hold surface
            (`_children_near_surface`) and follows the surface into the cells it reaches from there
            (`_close_surface`), so the cost grows with the surface area instead of the volume.
        chunk_size: the most points per call to the field.
        level: the iso-value to mesh.
        coarse_resolution: the first grid of `hierarchical`; `resolution` must be `coarse_resolution * 2**k`. None
            picks one (`_default_coarse_resolution`).
        band: how near the level a cell's corners must be for `hierarchical` to refine it, in cells, assuming
            the field changes by about one world unit per unit of distance. For a field with a steeper or flatter
            profile (a logit, say) multiply it by that gradient; too narrow a band only risks small separate
            parts, since the surface found is always followed to completion.

    Returns:
        The mesh (faces wound outward, world units, vertices shared between faces) and what it cost. On a field
        whose every surface piece reaches a refined cell, `hierarchical` gives the mesh `dense` gives.

    Raises:
        ValueError: bad arguments, or no surface (`NO_SURFACE`): the field is all inside or all outside, or
            `hierarchical` found no cell near the level.
    """
    if resolution < 1 or chunk_size < 1:
        raise ValueError(f"resolution and chunk_size must be positive, got {resolution} and {chunk_size}")
    lo, hi = np.asarray(bounds[0], dtype=np.float64), np.asarray(bounds[1], dtype=np.float64)
    if not np.all(hi > lo):
        raise ValueError(f"bounds must have hi > lo on every axis, got {bounds}")
    stats = ExtractionStats(method=method, resolution=resolution)
    start = time.perf_counter()
    mask, first = None, np.zeros(3)
    if method == "dense":
        values = _off_level(_evaluate_dense(field, lo, hi, resolution, chunk_size, stats) - level, 0.0)
    elif method == "hierarchical":
        coarse = _default_coarse_resolution(resolution) if coarse_resolution is None else coarse_resolution
        stats.coarse_resolution = coarse
        values, mask, first = _evaluate_hierarchical(field, lo, hi, resolution, coarse, chunk_size, level, band, stats)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'dense' or 'hierarchical'")
    spacing = (hi - lo) / resolution
    mesh = _mesh_from_values(values, lo + first * spacing, spacing, 0.0, mask)
    stats.seconds = time.perf_counter() - start
    return mesh, stats


def _mesh_from_values(
    values: np.ndarray, origin: np.ndarray, spacing: float | np.ndarray, level: float, mask: np.ndarray | None = None
) -> trimesh.Trimesh:
    """Marching cubes on grid samples at `origin + index * spacing` (spacing a scalar or one per axis), none of them
    exactly on the level (`_off_level`).

    With a `mask`, only the cells whose upper corner (i + 1, j + 1, k + 1) is set are visited (scikit-image's
    convention); the samples of the other cells are never read for the surface.
    """
    if not (mask.any() if mask is not None else values.min() < level < values.max()):
        raise ValueError(NO_SURFACE)
    # scikit-image winds faces so that normals point down the gradient ("descent"): for a field that is negative
    # inside, that is outward
    verts, faces, _normals, _ = marching_cubes(values, level=level, allow_degenerate=True, mask=mask)
    verts = verts * spacing + origin
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


def _evaluate_dense(
    field: FieldFunction, lo: np.ndarray, hi: np.ndarray, resolution: int, chunk_size: int, stats: ExtractionStats
) -> np.ndarray:
    """The field at every point of the (resolution + 1)^3 grid over [lo, hi]."""
    shape = (resolution + 1,) * 3
    values = np.empty(int(np.prod(shape)), dtype=np.float32)
    for start in range(0, values.size, chunk_size):
        flat = np.arange(start, min(start + chunk_size, values.size))
        values[flat] = _call_field(field, _grid_points(flat, shape, lo, (hi - lo) / resolution), stats)
    return values.reshape(shape)


def _evaluate_hierarchical(
    field: FieldFunction,
    lo: np.ndarray,
    hi: np.ndarray,
    resolution: int,
    coarse_resolution: int,
    chunk_size: int,
    level: float,
    band: float,
    stats: ExtractionStats,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field samples minus the level, a marching cubes mask of the cells that hold surface, and the grid index of
    the samples' first point. The samples are a slab of the full grid (a view, not a copy), zero where not queried.

    Each level keeps a list of cells whose 8 corners are known. The coarse level holds every cell; each finer one
    holds the children that pass `_children_near_surface`, and then `_close_surface` adds the cells the surface
    runs into from there, so that a band too narrow for a field that is only roughly a distance leaves no holes.
    Points are queried once, when a cell first needs them (`_Samples`).
    """
    depth = _refinement_depth(resolution, coarse_resolution)
    samples = _Samples(field, lo, (hi - lo) / resolution, resolution + 1, chunk_size, level, stats)
    size, stride = coarse_resolution, 2**depth
    cells = _all_cells(coarse_resolution)
    corners = samples.at(cells, stride)
    while True:
        cells, corners = _close_surface(cells, corners, size, stride, samples)
        if stride == 1:
            break
        keep = _children_near_surface(corners, band * np.max(hi - lo) / size)
        if not keep.any():
            raise ValueError(NO_SURFACE)
        cells, size, stride = (2 * cells[:, None, :] + _CORNERS)[keep], 2 * size, stride // 2
        corners = samples.at(cells, stride)
    surface = cells[_straddles(_inside_bits(corners))]
    if not len(surface):
        raise ValueError(NO_SURFACE)
    # a slab along the first axis is contiguous in memory, so marching cubes reads it without a copy
    first = np.array([surface[:, 0].min(), 0, 0])
    values = samples.values.reshape(samples.shape)[first[0] : surface[:, 0].max() + 2]
    mask = np.zeros(values.shape, dtype=bool)
    mask.reshape(-1)[_flat_index(surface - first + 1, values.shape)] = True
    return values, mask, first


class _Samples:
    """Field values minus the level at points of the finest grid, each queried once, when a cell first needs it.

    One array spans the whole grid, but only the memory pages that samples fall on are ever touched. A queried
    value is never exactly zero (`_nudge`), so zero marks a point not queried yet.
    """

    def __init__(
        self,
        field: FieldFunction,
        lo: np.ndarray,
        spacing: np.ndarray,
        points: int,
        chunk_size: int,
        level: float,
        stats: ExtractionStats,
    ) -> None:
        self.field, self.lo, self.spacing, self.chunk_size, self.level, self.stats = (
            field,
            lo,
            spacing,
            chunk_size,
            level,
            stats,
        )
        self.shape = (points,) * 3
        self.values = np.zeros(points**3, dtype=np.float32)

    def at(self, cells: np.ndarray, stride: int) -> np.ndarray:
        """The (cells, 8) corner values of cells `stride` points on a side, given by their lowest corners / stride."""
        index = _corner_index(cells * stride, self.shape, stride)
        corners = self.values[index]
        unknown = corners == 0
        if unknown.any():
            missing = _distinct(index[unknown])
            values = _evaluate_points(
                self.field, missing, self.shape, self.lo, self.spacing, self.chunk_size, self.stats
            )
            self.values[missing] = _nudge(values - self.level)
            corners[unknown] = self.values[index[unknown]]
        return corners


def _close_surface(
    cells: np.ndarray, corners: np.ndarray, size: int, stride: int, samples: _Samples
) -> tuple[np.ndarray, np.ndarray]:
    """Add to `cells` (of a size^3 grid) every cell that the surface reaches from them through a face, until none.

    The surface leaves a cell through a face whose corners straddle the level, so a cell that holds surface and
    has such a face towards a missing neighbour shows a hole; pulling in that neighbour, and repeating, makes every
    piece of surface that was found complete: the dense grid's surface, piece for piece.
    """
    grid = (size,) * 3
    steps = (size * size, size, 1)  # flat index steps along the axes
    keys = _flat_index(cells, grid)
    member = np.zeros(size**3, dtype=bool)
    member[keys] = True
    found_cells, found_corners = [cells], [corners]
    bits = _inside_bits(corners)
    while True:
        crossing = _straddles(bits)
        cells, keys, bits = cells[crossing], keys[crossing], bits[crossing]
        reached = []
        for axis, side, face in _FACES:
            on_face = bits & face
            # a face on the grid's boundary has no neighbour
            inner = cells[:, axis] != (0 if side < 0 else size - 1)
            reached.append(keys[(on_face != 0) & (on_face != face) & inner] + side * steps[axis])
        keys = np.concatenate(reached)
        keys = _distinct(keys[~member[keys]])
        if not keys.size:
            break
        member[keys] = True
        cells = np.stack(np.unravel_index(keys, grid), axis=-1)
        corners = samples.at(cells, stride)
        bits = _inside_bits(corners)
        found_cells.append(cells)
        found_corners.append(corners)
    if len(found_cells) == 1:
        return found_cells[0], found_corners[0]
    return np.concatenate(found_cells), np.concatenate(found_corners)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array (sorted in place), sorted. np.unique does the same but, in numpy 2.3+,
    through a hash table that is about 100 times slower than this sort on the few million indices of a level."""
    keys.sort()
    return keys[np.concatenate([keys[:1] == keys[:1], keys[1:] != keys[:-1]])]


def _inside_bits(corners: np.ndarray) -> np.ndarray:
    """One byte per cell, bit c set where corner c (in `_CORNERS` order) is inside (below the level)."""
    return np.packbits(corners < 0, axis=1, bitorder="little")[:, 0]


def _straddles(bits: np.ndarray) -> np.ndarray:
    """Which cells (`_inside_bits`) have corners on both sides of the level."""
    return (bits != 0) & (bits != 255)


def _default_coarse_resolution(resolution: int) -> int:
    """resolution / 2**k for the smallest k that brings it to at most 32 (384 -> 24, 256 -> 32, 128 -> 32), or
    failing that, the last one above 32 if it is at most 48 (70 -> 35).

    Below 16 a coarser grid has too few samples to be worth it; where the halving ends outside [16, 48] (an odd
    resolution, say), the coarse grid is the full one and the extraction is dense: hierarchical extraction takes
    16-48 times a power of two. A coarser start samples fewer points for the same mesh (25^3 instead of 49^3 at 384).
    """
    coarse = resolution
    while coarse > 32 and coarse % 2 == 0 and coarse // 2 >= 16:
        coarse //= 2
    return coarse if 16 <= coarse <= 48 else resolution


def _refinement_depth(resolution: int, coarse_resolution: int) -> int:
    """k such that resolution == coarse_resolution * 2**k; ValueError if there is none."""
    if coarse_resolution < 1:
        raise ValueError(f"coarse_resolution must be positive, got {coarse_resolution}")
    depth, size = 0, coarse_resolution
    while size < resolution:
        depth, size = depth + 1, size * 2
    if size != resolution:
        divisors = [resolution >> k for k in range(1, 8) if resolution % (1 << k) == 0 and resolution >> k >= 8]
        raise ValueError(
            f"hierarchical extraction needs resolution = coarse_resolution * 2**k; {resolution} is not a power-of-two"
            f" multiple of coarse_resolution {coarse_resolution} (coarse resolutions that fit: {divisors or 'none'})"
        )
    return depth


def _all_cells(resolution: int) -> np.ndarray:
    """Integer (i, j, k) of every cell of a resolution^3 grid of cells."""
    axis = np.arange(resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def _children_near_surface(corners: np.ndarray, band: float) -> np.ndarray:
    """Which of the 8 children of each cell (in `_CORNERS` order) may hold part of the surface: a (cells, 8) mask.

    `corners` are the cell's corner values minus the level, `band` a length. If the field is a distance, a child
    holds surface only if every known corner c is within the child's farthest point of it: |v(c)| <= that
    distance, which is (sqrt(3)/2) * cell size for the child's own corner and up to twice that for the opposite one
    (`_REACH`). A band of sqrt(3)/2 cells is exact; more leaves a margin for fields that are only approximately
    distances. The test also keeps thin parts (a plate, a strut) that pass between corners without changing their
    sign, which a sign test alone would drop.

    Where the test keeps no child of a cell whose corners straddle the level (only a field far from a distance, or
    a band below sqrt(3)/2, can cause that), two are kept: those at its nearest inside and nearest outside corner.
    The cell's centre is a corner of both, so whatever its sign one of them straddles the level too, and
    `_close_surface` finds the rest of that surface from there.
    """
    keep = np.all(np.abs(corners)[:, :, None] <= band * _REACH, axis=1)
    lost = np.flatnonzero((corners.min(axis=1) < 0) & (corners.max(axis=1) > 0) & ~keep.any(axis=1))
    if lost.size:
        distance = np.abs(corners[lost])
        inside = corners[lost] < 0
        keep[lost, np.where(inside, distance, np.inf).argmin(axis=1)] = True
        keep[lost, np.where(inside, np.inf, distance).argmin(axis=1)] = True
    return keep


def _nudge(values: np.ndarray) -> np.ndarray:
    """Values relative to the level, moved off zero (see `_off_level`)."""
    values[values == 0] = 1e-6
    return values


def _corner_index(cells: np.ndarray, shape: tuple[int, ...], stride: int = 1) -> np.ndarray:
    """Flat indices (cells, 8) of the corners of cells given by their lowest corners, `stride` points on a side."""
    return _flat_index(cells, shape)[:, None] + _flat_index(stride * _CORNERS, shape)


def _flat_index(ijk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat (C-order) indices of integer grid coordinates (..., 3)."""
    return (ijk[..., 0] * shape[1] + ijk[..., 1]) * shape[2] + ijk[..., 2]


def _grid_points(flat: np.ndarray, shape: tuple[int, ...], lo: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) float32 of grid points given by flat indices."""
    ijk = np.stack(np.unravel_index(flat, shape), axis=-1)
    return (lo + ijk * spacing).astype(np.float32)


def _evaluate_points(
    field: FieldFunction,
    flat: np.ndarray,
    shape: tuple[int, ...],
    lo: np.ndarray,
    spacing: np.ndarray,
    chunk_size: int,
    stats: ExtractionStats,
) -> np.ndarray:
    """The field at the grid points with these flat indices, `chunk_size` points per call."""
    values = np.empty(flat.size, dtype=np.float32)
    for start in range(0, flat.size, chunk_size):
        part = slice(start, start + chunk_size)
        values[part] = _call_field(field, _grid_points(flat[part], shape, lo, spacing), stats)
    return values


def _call_field(field: FieldFunction, points: np.ndarray, stats: ExtractionStats) -> np.ndarray:
    """One call to the field, counted, with its output checked to be one value per point."""
    start = time.perf_counter()
    values = np.asarray(field(points), dtype=np.float32).reshape(-1)
    stats.field_seconds += time.perf_counter() - start
    if values.size != len(points):
        raise ValueError(f"the field returned {values.size} values for {len(points)} points")
    stats.queries += len(points)
    stats.chunks += 1
    return values
