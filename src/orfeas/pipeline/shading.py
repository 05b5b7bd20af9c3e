"""Shape from shading: relief of the visible surface from the image's brightness, around a prior height field.

A matte object under one distant light is brightest where its surface faces the light (Lambert): intensity =
ambient + albedo * max(0, n . light). The light, albedo and ambient are fitted to the image itself with the prior's
normals; the front surface is then the prior plus a smooth correction `relief` that makes its shading match the
image, found by Gauss-Newton on a sparse least-squares problem whose bending penalty lets planes tilt freely. All
arrays are in image layout (row 0 at the top) on a square grid whose cells are `spacing` world units wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import splu

# Rounds of "fit the light on the lit pixels, then re-select the lit pixels" (the max(0, .) makes it non-linear).
LIGHT_ROUNDS = 4
# Variance of the shading (in units of the albedo) below which an image counts as evenly shaded.
MIN_SPREAD = 0.01
# Weight of the pull of the relief toward zero, per cell, relative to the shading term. The bending energy leaves
# tilts and wide bends free, so without this pull small shading residuals (texture, a second light) integrate into
# a whole-object bend or tilt; with it a wide deformation must be paid for by the shading it explains
# (docs/BENCHMARKS.md, "Depth prior on the corpus").
RELIEF_ANCHOR = 0.3


@dataclass(frozen=True)
class Light:
    """A distant light fitted to an image: unit direction (x right, y up, z to the camera), albedo and ambient in
    the image's intensity units, and the share of the intensity variance the Lambert model explains."""

    direction: np.ndarray
    albedo: float
    ambient: float
    fit: float


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Mean of the colour channels as float32 (with one albedo per object any mix of channels carries the shading)."""
    return rgb[..., :3].astype(np.float32).mean(axis=-1)


def surface_normals(height: np.ndarray, spacing: float) -> np.ndarray:
    """Unit normals (x right, y up, z to the camera) of a height field in image layout, by central differences."""
    dzdx = np.gradient(height, spacing, axis=1)
    dzdy = -np.gradient(height, spacing, axis=0)
    normals = np.stack([-dzdx, -dzdy, np.ones_like(height)], axis=-1)
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def estimate_light(normals: np.ndarray, intensity: np.ndarray) -> Light:
    """Least-squares Lambert fit, intensity = ambient + max(0, normals . b), b = albedo * direction.

    `normals` is (N, 3), `intensity` (N,). Pixels the current fit puts in shadow only constrain the ambient.
    """
    design = np.column_stack([normals, np.ones(len(normals))])
    lit = np.ones(len(normals), dtype=bool)
    coef = np.zeros(4)
    for _ in range(LIGHT_ROUNDS):
        rows = np.where(lit[:, None], design, design * [0, 0, 0, 1])
        coef = np.linalg.lstsq(rows, intensity, rcond=None)[0]
        new_lit = normals @ coef[:3] > 0
        if (new_lit == lit).all():
            break
        lit = new_lit
    albedo = float(np.linalg.norm(coef[:3]))
    direction = coef[:3] / albedo if albedo > 0 else np.array([0.0, 0.0, 1.0])
    predicted = coef[3] + albedo * np.maximum(normals @ direction, 0.0)
    variance = float(intensity.var())
    fit = 1.0 - float(((intensity - predicted) ** 2).mean()) / variance if variance > 0 else 0.0
    return Light(direction=direction, albedo=albedo, ambient=float(coef[3]), fit=fit)


def _difference_operators(unknown: np.ndarray, spacing: float) -> tuple[sparse.csr_matrix, ...]:
    """Central x and y derivatives (per world unit) and the second differences xx, yy and xy (per cell) over the
    grid, as matrices acting on the unknown cells (row-major order of `unknown`); rows where a stencil leaves the
    unknown cells are zero."""
    rows, cols = unknown.shape
    index = np.full(unknown.shape, -1)
    index[unknown] = np.arange(int(unknown.sum()))
    r, c = np.nonzero(unknown)
    n = len(r)

    def operator(stencil: list[tuple[int, int, float]]) -> sparse.csr_matrix:
        ok = np.ones(n, dtype=bool)
        for dr, dc, _ in stencil:
            rr, cc = r + dr, c + dc
            inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
            ok &= inside
            ok[inside] &= unknown[rr[inside], cc[inside]]
        data, row_ids, col_ids = [], [], []
        for dr, dc, weight in stencil:
            row_ids.append(np.flatnonzero(ok))
            col_ids.append(index[r[ok] + dr, c[ok] + dc])
            data.append(np.full(int(ok.sum()), weight))
        return sparse.csr_matrix(
            (np.concatenate(data), (np.concatenate(row_ids), np.concatenate(col_ids))), shape=(n, n)
        )

    half = 0.5 / spacing
    dx = operator([(0, 1, half), (0, -1, -half)])
    dy = operator([(-1, 0, half), (1, 0, -half)])  # y runs up, rows run down
    dxx = operator([(0, 0, -2.0), (0, 1, 1.0), (0, -1, 1.0)])
    dyy = operator([(0, 0, -2.0), (1, 0, 1.0), (-1, 0, 1.0)])
    dxy = operator([(1, 1, 0.25), (-1, -1, 0.25), (1, -1, -0.25), (-1, 1, -0.25)])
    return dx, dy, dxx, dyy, dxy


def shading_relief(
    prior: np.ndarray,
    intensity: np.ndarray,
    mask: np.ndarray,
    spacing: float,
    light: Light,
    smoothness: float,
    solves: int = 6,
) -> tuple[np.ndarray, float]:
    """The smooth correction `relief` for which `prior + relief` is shaded most like `intensity` under `light`,
    and the share of the intensity variance that shading then explains (1: all of it).

    Least squares over the object's pixels of (Lambert shading - intensity) / albedo, plus `smoothness` times the
    relief's thin-plate bending energy (tilted planes cost nothing) and a tiny pull toward zero that
    fixes the free constant. Solved on the mask grown by two cells so the outline itself may move in depth.
    """
    unknown = ndimage.binary_dilation(mask, iterations=2)
    data = ndimage.binary_erosion(mask)[unknown].astype(np.float64)
    dx, dy, dxx, dyy, dxy = _difference_operators(unknown, spacing)
    base = prior[unknown].astype(np.float64)
    target = (intensity[unknown].astype(np.float64) - light.ambient) / max(light.albedo, 1e-6)
    lx, ly, lz = light.direction
    # Thin-plate bending energy per cell, relative to the shading term: features narrower than about `smoothness`
    # (world units) are smoothed away, wider ones follow the shading, planes cost nothing. Unlike the squared
    # Laplacian it also charges saddles (x^2 - y^2), which the shading alone leaves free. Stencils are in cells,
    # hence spacing**4.
    bending = (smoothness**2 / spacing**4) * (dxx.T @ dxx + 2 * dxy.T @ dxy + dyy.T @ dyy)
    anchor = RELIEF_ANCHOR * sparse.identity(len(base))

    def shading(relief: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        height = base + relief
        p, q = dx @ height, dy @ height
        norm = np.sqrt(1.0 + p * p + q * q)
        return p, q, norm, (-p * lx - q * ly + lz) / norm

    def cost(relief: np.ndarray, dot: np.ndarray) -> float:
        residual = data * (np.maximum(dot, 0.0) - target)
        return float(residual @ residual + relief @ (bending @ relief) + RELIEF_ANCHOR * relief @ relief)

    relief = np.zeros_like(base)
    p, q, norm, dot = shading(relief)
    current = cost(relief, dot)
    damping = 1e-2
    for _ in range(solves):
        weight = data * (dot > 0)
        residual = weight * (dot - target)
        dp = weight * (-lx / norm - dot * p / norm**2)
        dq = weight * (-ly / norm - dot * q / norm**2)
        jacobian = sparse.diags(dp) @ dx + sparse.diags(dq) @ dy
        jtj = jacobian.T @ jacobian
        gradient = jacobian.T @ residual + bending @ relief + RELIEF_ANCHOR * relief
        # Levenberg-Marquardt: a step that does not lower the cost is dropped and the next one is damped more
        system = jtj + bending + anchor + damping * sparse.diags(jtj.diagonal() + 1e-3)
        candidate = relief - _solve_symmetric(system, gradient)
        trial = shading(candidate)
        new = cost(candidate, trial[3])
        if new < current:
            relief, (p, q, norm, dot), current = candidate, trial, new
            damping = max(damping / 10.0, 1e-4)
        else:
            damping *= 10.0
    out = np.zeros(prior.shape, dtype=np.float32)
    out[unknown] = relief
    seen = data > 0
    error = float(((np.maximum(dot, 0.0) - target)[seen] ** 2).mean())
    # the spread is floored so that a nearly uniform shade (one flat face) that is matched counts as explained
    spread = max(float(target[seen].var()), MIN_SPREAD)
    return out, 1.0 - error / spread


def _solve_symmetric(matrix: sparse.csr_matrix, rhs: np.ndarray) -> np.ndarray:
    """Solve a sparse symmetric positive definite system. SuperLU with a symmetric ordering and no pivoting is a
    few times faster here than spsolve's default (scipy has no sparse Cholesky)."""
    lu = splu(matrix.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return lu.solve(rhs)


def harmonic_fill(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The harmonic (membrane) interpolation over `mask` of `values` on the mask's outer ring of cells.

    Used as the mid-surface of a tilted object: it passes through the outline's depths and bends as little as it can.
    """
    ring = ndimage.binary_dilation(mask) & ~mask
    region = mask | ring
    index = np.full(mask.shape, -1)
    index[mask] = np.arange(int(mask.sum()))
    r, c = np.nonzero(mask)
    n = len(r)
    rows_, cols_ = mask.shape
    diag = np.zeros(n)
    rhs = np.zeros(n)
    off_rows, off_cols = [], []
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < rows_) & (cc >= 0) & (cc < cols_)
        ok[ok] &= region[rr[ok], cc[ok]]
        diag += ok
        inner = ok.copy()
        inner[ok] &= mask[rr[ok], cc[ok]]
        edge = ok & ~inner
        rhs[edge] += values[rr[edge], cc[edge]]
        off_rows.append(np.flatnonzero(inner))
        off_cols.append(index[rr[inner], cc[inner]])
    off_rows_all, off_cols_all = np.concatenate(off_rows), np.concatenate(off_cols)
    matrix = sparse.csr_matrix(
        (
            np.concatenate([diag, -np.ones(len(off_rows_all))]),
            (np.concatenate([np.arange(n), off_rows_all]), np.concatenate([np.arange(n), off_cols_all])),
        ),
        shape=(n, n),
    )
    out = values.astype(np.float64).copy()
    # a component with no ring cell (cannot happen for a mask inside the grid) would make the matrix singular
    out[mask] = _solve_symmetric(matrix, rhs)
    return out.astype(np.float32)


@dataclass(frozen=True)
class OutlineTilt:
    """How far the outline looks like a round, flat-topped object (a disc, a cylinder, a ring) seen from above: its
    top and bottom edges are two half-ellipses of the same width. `slope` is the depth change per unit of image
    height (the near side at the bottom), 0 when the outline is not of that kind."""

    slope: float
    ratio: float
    error: float


# The outline's top and bottom edges must follow half-ellipses to within this fraction of the half-width ...
TILT_MAX_ERROR = 0.01
# ... with the same height to within this fraction, and a height between these fractions of the half-width: above
# the highest the object is nearly seen along its axis (no tilt to read); below the lowest the edges are nearly
# straight (a box seen from the side looks the same).
TILT_MAX_MISMATCH = 0.1
TILT_RATIO_RANGE = (0.3, 0.95)
# Largest gap between the centres of the two half-ellipses (a cylinder's visible side), as a fraction of the
# half-width: only a flat disc or a ring seen obliquely is tilted.
TILT_MAX_SIDE = 0.15


def outline_tilt(mask: np.ndarray) -> OutlineTilt:
    """The tilt of a round object seen obliquely, read from the outline alone.

    A circle of radius a whose plane is tilted toward the camera by an elevation e projects to an ellipse of
    half-width a and half-height a sin(e); the plane's depth then changes by cot(e) per unit of image height. A
    cylinder's outline is the top half of its top ellipse and the bottom half of its bottom one, so each edge is
    fitted on its own: top(x) = c1 + b1 sqrt(1 - u^2), bottom(x) = c2 - b2 sqrt(1 - u^2), u = (x - centre) / a. Of the
    two ways such an object can lean, the one seen from above (the near side at the bottom of the image) is taken,
    as objects usually rest on the ground below the camera.
    """
    cols = np.flatnonzero(mask.any(axis=0))
    none = OutlineTilt(slope=0.0, ratio=1.0, error=float("inf"))
    if len(cols) < 8 or len(cols) != cols[-1] - cols[0] + 1:
        return none
    rows = mask.shape[0]
    half = len(cols) / 2.0
    u = np.clip((cols + 0.5 - (cols[0] + half)) / half, -1.0, 1.0)
    design = np.column_stack([np.ones(len(cols)), np.sqrt(1.0 - u * u)])
    column = mask[:, cols]
    top = rows - np.argmax(column, axis=0).astype(np.float64)  # y up, in cells
    bottom = np.argmax(column[::-1], axis=0).astype(np.float64)
    (c1, b1), *_ = np.linalg.lstsq(design, top, rcond=None)
    (c2, b2), *_ = np.linalg.lstsq(design, -bottom, rcond=None)
    side = float(c1 + c2) / half  # the gap between the two half-ellipses' centres: a cylinder's visible side
    fits = (design @ np.linalg.lstsq(design, edge, rcond=None)[0] - edge for edge in (top, -bottom))
    error = max(float(np.sqrt((f**2).mean())) for f in fits) / half
    ratio = (b1 + b2) / (2.0 * half)
    low, high = TILT_RATIO_RANGE
    if (
        error > TILT_MAX_ERROR
        or abs(b1 - b2) > TILT_MAX_MISMATCH * half
        or side > TILT_MAX_SIDE
        or not low <= ratio <= high
    ):
        return OutlineTilt(slope=0.0, ratio=float(ratio), error=error)
    return OutlineTilt(slope=float(np.sqrt(1.0 - ratio**2) / ratio), ratio=float(ratio), error=error)
