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

# The 8 corners of a unit cell and the 27 points of a cell split in two along each axis, as integer offsets.
_CORNERS = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), axis=-1).reshape(-1, 3)
_SPLIT_POINTS = np.stack(np.meshgrid([0, 1, 2], [0, 1, 2], [0, 1, 2], indexing="ij"), axis=-1).reshape(-1, 3)


@dataclass
class ExtractionStats:
    """What an extraction cost: field queries, calls to the field, wall time."""

    queries: int = 0
    chunks: int = 0
    seconds: float = 0.0
    method: str = ""
    resolution: int = 0


def extract_mesh(field: GridField, level: float = 0.0) -> trimesh.Trimesh:
    """Marching cubes on a grid field (negative inside); returns an outward-facing mesh in world units."""
    return _mesh_from_values(field.values, np.asarray(field.origin, dtype=np.float64), field.spacing, level)


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
    coarse_resolution: int = 32,
    band: float = 1.5,
) -> tuple[trimesh.Trimesh, ExtractionStats]:
    """Mesh the level set of a queryable field on a (resolution + 1)^3 grid spanning `bounds`.

    `dense` queries every grid point (what a shape decoder does by default). `hierarchical` queries a
    (coarse_resolution + 1)^3 grid and then, level by level, halves only the cells near the surface (see
    `_cells_near_surface` for the test and its assumption that the field is roughly a distance), so the cost grows
    with the surface area instead of the volume; `resolution` must be `coarse_resolution * 2**k`. The field is
    always called with at most `chunk_size` points at a time.
    """
    if resolution < 1 or chunk_size < 1:
        raise ValueError(f"resolution and chunk_size must be positive, got {resolution} and {chunk_size}")
    lo, hi = np.asarray(bounds[0], dtype=np.float64), np.asarray(bounds[1], dtype=np.float64)
    if not np.all(hi > lo):
        raise ValueError(f"bounds must have hi > lo on every axis, got {bounds}")
    stats = ExtractionStats(method=method, resolution=resolution)
    start = time.perf_counter()
    if method == "dense":
        values = _evaluate_dense(field, lo, hi, resolution, chunk_size, stats)
    elif method == "hierarchical":
        values = _evaluate_hierarchical(field, lo, hi, resolution, coarse_resolution, chunk_size, level, band, stats)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'dense' or 'hierarchical'")
    mesh = _mesh_from_values(values, lo, (hi - lo) / resolution, level)
    stats.seconds = time.perf_counter() - start
    return mesh, stats


def _mesh_from_values(
    values: np.ndarray, origin: np.ndarray, spacing: float | np.ndarray, level: float
) -> trimesh.Trimesh:
    """Marching cubes on grid samples at `origin + index * spacing` (spacing a scalar or one per axis)."""
    values = _off_level(values, level)
    if not (values.min() < level < values.max()):
        raise ValueError("the field has no surface at this level (all inside or all outside)")
    # scikit-image winds faces so that normals point down the gradient ("descent"): for a field that is negative
    # inside, that is outward
    verts, faces, _normals, _ = marching_cubes(values, level=level, allow_degenerate=True)
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
) -> np.ndarray:
    """The (resolution + 1)^3 grid of field values, evaluated only near the surface and interpolated elsewhere.

    Each level is a dense array twice as fine as the last, made by trilinear upsampling and then overwritten at
    the points queried at that level. Points that are never queried keep the interpolated value: they lie in a
    cell that was not refined, whose corners were all queried and share a sign with a magnitude of at least
    `band` cells of that level, so the interpolated values keep that sign and marching cubes finds no surface there.
    """
    depth = _refinement_depth(resolution, coarse_resolution)
    values = _evaluate_dense(field, lo, hi, coarse_resolution, chunk_size, stats)
    queried = np.ones(values.shape, dtype=bool)
    cells = _all_cells(coarse_resolution)
    for step in range(1, depth + 1):
        cell_size = np.max(hi - lo) / (coarse_resolution * 2 ** (step - 1))
        cells = _cells_near_surface(values, cells, level, band * cell_size)
        values, queried = _upsample(values), _upsample_mask(queried)
        needed = _unqueried_points(cells, queried)
        cells = _split_cells(cells)
        spacing = (hi - lo) / (coarse_resolution * 2**step)
        values.reshape(-1)[needed] = _evaluate_points(field, needed, values.shape, lo, spacing, chunk_size, stats)
        queried.reshape(-1)[needed] = True
    return values


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


def _cells_near_surface(values: np.ndarray, cells: np.ndarray, level: float, band: float) -> np.ndarray:
    """The cells (rows of `cells`) that may hold part of the surface.

    A cell is kept when its 8 corner values straddle the level, or when the smallest |value - level| at a corner
    is below `band` (world units). The second test assumes the field is roughly a signed distance (|gradient| near 1):
    then a cell whose corners are all farther than half its diagonal from the surface cannot contain any of it,
    and a band of a cell size or more leaves a margin for fields that are only approximately distances. It also
    catches thin parts (a plate, a strut) that pass between the corners of a coarse cell without changing their sign,
    which a sign test alone would drop.
    """
    corners = values.reshape(-1)[_flat_index(cells[:, None, :] + _CORNERS, values.shape)] - level
    straddles = (corners.min(axis=1) < 0) & (corners.max(axis=1) > 0)
    close = np.abs(corners).min(axis=1) < band
    return cells[straddles | close]


def _split_cells(cells: np.ndarray) -> np.ndarray:
    """The 8 children of each cell, in the grid twice as fine."""
    return (2 * cells[:, None, :] + _CORNERS).reshape(-1, 3)


def _unqueried_points(cells: np.ndarray, queried: np.ndarray) -> np.ndarray:
    """Flat indices of the points that splitting `cells` adds to the grid twice as fine and that are not queried yet.

    Each point once, though neighbouring cells share them.
    """
    needed = np.zeros(queried.size, dtype=bool)
    needed[_flat_index(2 * cells[:, None, :] + _SPLIT_POINTS, queried.shape)] = True
    needed &= ~queried.reshape(-1)
    return np.flatnonzero(needed)


def _upsample(values: np.ndarray) -> np.ndarray:
    """Trilinear upsampling of a grid of n^3 samples to (2n - 1)^3 (one new sample between each pair).

    Written in place into one C-contiguous array (so that writes through `reshape(-1)` reach it), one axis at a
    time: each pass fills the midpoints along an axis from the samples the previous passes already placed.
    """
    out = np.empty(tuple(2 * s - 1 for s in values.shape), dtype=values.dtype)
    out[::2, ::2, ::2] = values
    _fill_midpoints(out[:, ::2, ::2], axis=0)
    _fill_midpoints(out[:, :, ::2], axis=1)
    _fill_midpoints(out, axis=2)
    return out


def _fill_midpoints(grid: np.ndarray, axis: int) -> None:
    """Set the odd samples along one axis of a view to the mean of their even neighbours."""
    midpoints = grid[_along(axis, slice(1, None, 2))]
    np.add(grid[_along(axis, slice(None, -1, 2))], grid[_along(axis, slice(2, None, 2))], out=midpoints)
    midpoints *= 0.5


def _along(axis: int, part: slice) -> tuple[slice, ...]:
    """An index that takes `part` along one axis of a 3-D array and everything along the others."""
    return tuple(part if a == axis else slice(None) for a in range(3))


def _upsample_mask(mask: np.ndarray) -> np.ndarray:
    """A (2n - 1)^3 mask that is True exactly at the old samples that were True."""
    out = np.zeros(tuple(2 * s - 1 for s in mask.shape), dtype=bool)
    out[::2, ::2, ::2] = mask
    return out


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
    values = np.asarray(field(points), dtype=np.float32).reshape(-1)
    if values.size != len(points):
        raise ValueError(f"the field returned {values.size} values for {len(points)} points")
    stats.queries += len(points)
    stats.chunks += 1
    return values
