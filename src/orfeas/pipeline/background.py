"""Background removal: find the object's mask, then crop and recentre it into a square cut-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from orfeas.errors import InvalidImage


@dataclass(frozen=True)
class Cutout:
    """A square RGBA image with the object centred and a margin around it; alpha is the object mask.

    Pixel (row r, column c) of an S x S cut-out covers world x = (c + 0.5) / S - 0.5, y = 0.5 - (r + 0.5) / S:
    the cut-out spans [-0.5, 0.5] in X and Y, seen by a camera on +Z.
    """

    rgba: np.ndarray
    method: str

    @property
    def mask(self) -> np.ndarray:
        """Boolean object mask (alpha at least half)."""
        return self.rgba[..., 3] >= 128

    @property
    def size(self) -> int:
        return int(self.rgba.shape[0])


class BackgroundRemover(Protocol):
    """A pluggable background remover: RGBA image in, object opacity out.

    This is where a learned remover (for instance rembg with a model file already on disk) plugs in; without
    one, `remove_background` uses the image's own alpha or the classical segmentation below.
    """

    def __call__(self, rgba: np.ndarray) -> np.ndarray:
        """Return an (H, W) float32 alpha in [0, 1], or a bool mask, for an (H, W, 4) uint8 image."""
        ...


# An alpha channel is a real mask when at least this share of pixels is clearly transparent (alpha < 128)...
_MIN_TRANSPARENT_FRACTION = 0.01
# ...and at least this share is opaque (alpha >= 128).
_MIN_OPAQUE_FRACTION = 0.001
# A mask covering more than this share of the image means no background was told apart.
_MAX_OBJECT_FRACTION = 0.98

# Classical segmentation runs on a copy with this longest side (GrabCut's cost grows with the area).
_WORK_SIDE = 320
_GRABCUT_ITERATIONS = 3
# Background pixels kept around the undecided region when GrabCut runs on a crop (working-image pixels).
_GRABCUT_PAD = 8
# Width of the border strip that samples the background colour, as a share of the working image's side.
_BORDER_FRACTION = 0.03
# Lab distance (CIE76 delta E) below which a pixel always counts as background colour. Lower keeps object
# parts close to the background colour (grey legs on grey) but lets more of a dark matting halo in.
_MIN_COLOR_DISTANCE = 8.0
# Degree of the polynomial (in x and y) that models the backdrop's colour: a sweep, a spot light, vignetting.
_BACKDROP_DEGREE = 4
# Rounds of "fit the backdrop to the pixels that look like it, re-select them".
_BACKDROP_ROUNDS = 3
# ... on a copy with this longest side (the backdrop varies slowly).
_BACKDROP_SIDE = 80
# A shadow darkens the backdrop without changing its hue: chromaticity (r, g, b over r + g + b) within this of the
# backdrop's, lightness between these shares of the backdrop's, and no sharp step nearby. A step is sharp where the
# lightness gradient at the fine scale exceeds this (Lab L per pixel) and this multiple of the gradient at the
# coarse scale (a blurred shadow edge keeps its gradient when blurred further; an outline loses it). The scales are
# Gaussian sigmas in working-image pixels.
_SHADOW_CHROMA = 0.03
_SHADOW_LIGHTNESS = (0.2, 0.97)
_SHARP_MIN_GRADIENT = 3.0
_SHARP_RATIO = 1.6
_SHARP_SCALES = (0.7, 2.0)
# ... and at least this share of its surroundings is backdrop (a region the object surrounds is part of it).
_SHADOW_MIN_OPEN = 0.6
# A region darker than this share of the backdrop's lightness needs only this share of backdrop round it.
_DARK_SHADOW = 0.7
_DARK_SHADOW_MIN_OPEN = 0.3
# Components smaller than this share of the largest one, or than this share of the image, are dropped.
_MIN_COMPONENT_FRACTION = 0.005
_MIN_SPECK_FRACTION = 2e-4
# The outline is re-decided by a colour guided filter of the coarse mask, on a copy with at most this longest side:
# pixels within `_EDGE_BAND` of the outline take the filtered mask; `_GUIDED_RADIUS` is the filter's window
# half-width and `_GUIDED_EPS` its regulariser (colour variance, RGB in 0-1), below which a window's colour
# contrast is not trusted to move the edge (object and backdrop too alike: the coarse mask stands).
_REFINE_SIDE = 1024
_EDGE_BAND = 3
_GUIDED_RADIUS = 6
_GUIDED_EPS = 1e-3


def alpha_mask(rgba: np.ndarray) -> np.ndarray | None:
    """The alpha channel as float32 opacity in [0, 1] when it holds a real object mask, else None.

    A real mask has some clearly transparent pixels and some opaque ones; a uniformly opaque (or uniformly
    transparent) channel says nothing about where the object is.
    """
    alpha = _as_rgba(rgba)[..., 3]
    transparent = np.count_nonzero(alpha < 128) / alpha.size
    opaque = 1.0 - transparent
    if transparent < _MIN_TRANSPARENT_FRACTION or opaque < _MIN_OPAQUE_FRACTION:
        return None
    return alpha.astype(np.float32) / 255.0


def segment_studio_background(rgb: np.ndarray) -> np.ndarray:
    """Boolean object mask for a photo or render on a studio backdrop: plain, a sweep or a spot, with shadows.

    The backdrop's colour is modelled as a smooth polynomial of position, fitted to the border and then to every
    pixel that matches it, so gradients and vignetting count as backdrop. Pixels far from it seed GrabCut as object,
    except those that look like the backdrop in shadow (same hue, darker, soft): those start as background and
    GrabCut's colour models and edges settle them. Holes that show the backdrop stay open; enclosed holes that do
    not look like it are filled. The outline is then re-decided near full resolution by a guided filter that lets
    the mask follow the image's own colour edges.
    """
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    small = _downscale(rgb, _WORK_SIDE)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    border = _border_strip(small.shape[:2], max(2, round(_BORDER_FRACTION * max(small.shape[:2]))))
    backdrop = fit_backdrop(lab, border)
    distance = np.linalg.norm(lab - backdrop, axis=2)
    threshold = max(_MIN_COLOR_DISTANCE, 3.0 * float(np.median(distance[border])))
    far = distance >= threshold
    if not far.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    shadow_like, tinted, ratio = _shadow_like(small, lab, backdrop)
    shadow = _cast_shadows(far & shadow_like, far, ratio)
    trimap = _grabcut_trimap(distance, threshold, border, shadow, tinted)
    fg = _run_grabcut(small, trimap)
    fg = _drop_small_components(fg)
    fg = _fill_object_holes(fg, far & ~shadow)
    return _refine_outline(rgb, fg)


def remove_background(rgba: np.ndarray, remover: BackgroundRemover | None = None) -> tuple[np.ndarray, str]:
    """Object opacity as (H, W) float32 in [0, 1] and the method that found it: "alpha", "grabcut", or the
    remover's `name` ("onnx:u2net"; "custom" for a remover without one).

    The image's alpha wins when it is a real mask; else the plug-in `remover`; else classical segmentation.
    Raises `InvalidImage` when no object can be told apart from the background.
    """
    rgba = _as_rgba(rgba)
    alpha = alpha_mask(rgba)
    if alpha is not None:
        method = "alpha"
    else:
        if remover is not None:
            alpha, method = _as_alpha(remover(rgba), rgba.shape[:2]), str(getattr(remover, "name", "custom"))
        else:
            alpha, method = segment_studio_background(rgba[..., :3]).astype(np.float32), "grabcut"
        # Keep whatever transparency the image had even though it was not a mask of its own.
        alpha *= rgba[..., 3].astype(np.float32) / 255.0
    _check_coverage(alpha, method)
    return alpha, method


def crop_to_object(
    rgba: np.ndarray, alpha: np.ndarray, *, size: int = 512, margin: float = 0.05, method: str = "alpha"
) -> Cutout:
    """Crop to the object, centre it in a square `size` x `size` cut-out with `margin` on each side.

    `alpha` ((H, W) in [0, 1]) becomes the cut-out's alpha in place of the image's own. The longest side of
    the object's bounding box spans (1 - 2 * margin) of the cut-out. Resizing is done on premultiplied colour
    so transparent pixels do not bleed dark fringes into the edges; background pixels get RGB 0.
    """
    if size < 1 or not 0.0 <= margin < 0.5:
        raise ValueError(f"need size >= 1 and 0 <= margin < 0.5, got size={size}, margin={margin}")
    rgba = _as_rgba(rgba)
    alpha = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    top, left, side = _square_window(alpha >= 0.5, margin)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    # Premultiply in uint16 (255 * 255 fits), one channel at a time to bound memory on large inputs.
    window_alpha = _crop_padded(np.rint(alpha * 255.0).astype(np.uint16), top, left, side)
    resized = []
    for channel in range(3):
        window = _crop_padded(rgba[..., channel], top, left, side).astype(np.uint16) * window_alpha
        resized.append(cv2.resize(window, (size, size), interpolation=interpolation))
    resized.append(cv2.resize(window_alpha * 255, (size, size), interpolation=interpolation))
    return Cutout(rgba=_unpremultiply(resized), method=method)


def prepare_image(
    rgba: np.ndarray, *, size: int = 512, margin: float = 0.05, remover: BackgroundRemover | None = None
) -> Cutout:
    """Find the object and cut it out into a centred square: `remove_background` then `crop_to_object`."""
    alpha, method = remove_background(rgba, remover)
    return crop_to_object(rgba, alpha, size=size, margin=margin, method=method)


def _as_rgba(image: np.ndarray) -> np.ndarray:
    """Accept (H, W, 4) or (H, W, 3) uint8; an RGB image gets an opaque alpha channel."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) or (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[2] == 4:
        return image
    opaque = np.full((*image.shape[:2], 1), 255, dtype=np.uint8)
    return np.concatenate([image, opaque], axis=2)


def _as_alpha(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A remover's output as float32 opacity in [0, 1]."""
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"background remover returned shape {mask.shape}, expected {shape}")
    return np.clip(mask.astype(np.float32), 0.0, 1.0)


def _check_coverage(alpha: np.ndarray, method: str) -> None:
    covered = np.count_nonzero(alpha >= 0.5) / alpha.size
    if covered == 0.0:
        raise InvalidImage(f"no object found in the image (background removal by {method} left nothing)")
    if covered > _MAX_OBJECT_FRACTION:
        raise InvalidImage(
            f"no object found: the mask from {method} covers {covered:.0%} of the image, so no background "
            "could be told apart; send a cut-out with transparency or a photo on a plain background"
        )


def _downscale(rgb: np.ndarray, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return rgb
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, shape, interpolation=cv2.INTER_AREA)


def _border_strip(shape: tuple[int, int], width: int) -> np.ndarray:
    strip = np.zeros(shape, dtype=bool)
    strip[:width] = strip[-width:] = True
    strip[:, :width] = strip[:, -width:] = True
    return strip


def fit_backdrop(lab: np.ndarray, border: np.ndarray) -> np.ndarray:
    """The backdrop's Lab colour at every pixel: a polynomial of position fitted to the pixels that match it.

    A quadratic fitted to the border strip sets the tolerance (its residual there); each later round refits the
    full polynomial on every pixel within that tolerance of the model (the object and its shadow are far from it),
    so the model follows a sweep or a spot of light across the frame rather than extrapolating from the edges. The
    backdrop is smooth, so the fit runs on a small copy and the polynomial is evaluated at full size.
    """
    height, width = lab.shape[:2]
    scale = min(1.0, _BACKDROP_SIDE / max(height, width))
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    small = cv2.resize(lab, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else lab
    edge = cv2.resize(border.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    edge |= _border_strip(small.shape[:2], 1)
    powers_y, powers_x = _powers(small.shape[0]), _powers(small.shape[1])
    exponents = [(i, j) for i in range(_BACKDROP_DEGREE + 1) for j in range(_BACKDROP_DEGREE + 1 - i)]
    terms = np.stack([powers_x[None, :, i] * powers_y[:, None, j] for i, j in exponents], axis=-1).reshape(
        -1, len(exponents)
    )
    values = small.reshape(-1, 3).astype(np.float64)
    border_only = edge.ravel()
    # first a quadratic on the border strip (refitted without the border pixels it explains worst, where the
    # object may touch the frame); its residual there sets the tolerance for the later rounds, which refit the
    # full polynomial on every pixel within that tolerance
    quadratic = [k for k, (i, j) in enumerate(exponents) if i + j <= 2]
    chosen = border_only
    for _ in range(2):
        coef = _fit_polynomial(terms, values, chosen, quadratic)
        distance = np.linalg.norm(values - terms @ coef, axis=1)
        tolerance = max(_MIN_COLOR_DISTANCE, 3.0 * float(np.median(distance[border_only])))
        chosen = border_only & (distance < tolerance)
    everything = list(range(len(exponents)))
    for _ in range(_BACKDROP_ROUNDS):
        selected = distance < tolerance
        if selected.sum() < 2 * len(exponents):
            break
        coef = _fit_polynomial(terms, values, selected, everything)
        distance = np.linalg.norm(values - terms @ coef, axis=1)
    # sum_ij c_ij x^i y^j as (powers of y) @ C @ (powers of x)^T, one channel at a time
    full_y, full_x = _powers(height), _powers(width)
    model = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        grid = np.zeros((_BACKDROP_DEGREE + 1, _BACKDROP_DEGREE + 1))
        for (i, j), c in zip(exponents, coef[:, channel], strict=True):
            grid[j, i] = c
        model[..., channel] = full_y @ grid @ full_x.T
    return model


def _fit_polynomial(terms: np.ndarray, values: np.ndarray, rows: np.ndarray, used: list[int]) -> np.ndarray:
    """Least-squares coefficients (zero for the terms not `used`) of the polynomial through `values[rows]`."""
    design = terms[rows][:, used]
    coef = np.zeros((terms.shape[1], values.shape[1]))
    # normal equations: a 15 x 15 solve, much cheaper here than an SVD-based lstsq on thousands of rows
    coef[used] = np.linalg.solve(design.T @ design + 1e-6 * np.eye(len(used)), design.T @ values[rows])
    return coef


def _powers(count: int) -> np.ndarray:
    """Powers 0.._BACKDROP_DEGREE of `count` coordinates spread over [-1, 1], as a (count, degree + 1) array."""
    t = np.linspace(-1.0, 1.0, count)
    return t[:, None] ** np.arange(_BACKDROP_DEGREE + 1)[None, :]


def _shadow_like(rgb: np.ndarray, lab: np.ndarray, backdrop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels that look like the backdrop in shadow (its chromaticity, darker, no sharp step nearby); pixels of the
    backdrop's chromaticity and darker, steps or not; and every pixel's lightness as a share of the backdrop's.
    Colours are smoothed first: a shadow is smooth, and the chromaticity of dark pixels is noisy."""
    backdrop_rgb = cv2.cvtColor(backdrop, cv2.COLOR_Lab2RGB)
    image = cv2.GaussianBlur(rgb.astype(np.float32) / 255.0, (0, 0), 1.5)
    chroma = image / np.maximum(image.sum(axis=2, keepdims=True), 1e-3)
    backdrop_chroma = backdrop_rgb / np.maximum(backdrop_rgb.sum(axis=2, keepdims=True), 1e-3)
    same_hue = np.abs(chroma - backdrop_chroma).max(axis=2) < _SHADOW_CHROMA
    lightness = cv2.GaussianBlur(lab[..., 0], (0, 0), 1.0)
    ratio = (lightness + 1.0) / (backdrop[..., 0] + 1.0)
    darker = (ratio > _SHADOW_LIGHTNESS[0]) & (ratio < _SHADOW_LIGHTNESS[1])
    fine, coarse = (_gradient(cv2.GaussianBlur(lab[..., 0], (0, 0), sigma)) for sigma in _SHARP_SCALES)
    sharp = (fine > _SHARP_MIN_GRADIENT) & (fine > _SHARP_RATIO * coarse)
    soft = cv2.dilate(sharp.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
    tinted = same_hue & darker
    shadow = cv2.morphologyEx((tinted & soft).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return shadow.astype(bool), tinted, ratio


def _gradient(channel: np.ndarray) -> np.ndarray:
    """Gradient magnitude per pixel (Sobel, scaled to units per pixel)."""
    dx = cv2.Sobel(channel, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(channel, cv2.CV_32F, 0, 1, ksize=3)
    return np.hypot(dx, dy) / 8.0


def _cast_shadows(shadow: np.ndarray, far: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """The shadow-like regions that are shadows on the backdrop: mostly surrounded by backdrop, or clearly dark and
    partly against it. A pale region the object surrounds (a white seat, a white face) is the object's own shading.
    """
    count, labels = cv2.connectedComponents(shadow.astype(np.uint8), connectivity=8)
    if count <= 1:
        return shadow
    ring = cv2.dilate(shadow.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~shadow
    nearest = _nearest_label(labels, ring)
    against_backdrop = np.bincount(nearest[ring], weights=~far[ring], minlength=count)
    open_share = against_backdrop / np.maximum(np.bincount(nearest[ring], minlength=count), 1)
    darkness = np.bincount(labels.ravel(), weights=ratio.ravel(), minlength=count) / np.maximum(
        np.bincount(labels.ravel(), minlength=count), 1
    )
    keep = (open_share >= _SHADOW_MIN_OPEN) | ((open_share >= _DARK_SHADOW_MIN_OPEN) & (darkness <= _DARK_SHADOW))
    keep[0] = False
    return keep[labels]


def _nearest_label(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """For each pixel, the label of the nearest labelled (non-zero) pixel; used on the ring round the regions."""
    dilated = cv2.dilate(labels.astype(np.float32), np.ones((3, 3), np.uint8))
    return np.where(where, dilated, 0).astype(np.int64)


def _grabcut_trimap(
    distance: np.ndarray, threshold: float, border: np.ndarray, shadow: np.ndarray, tinted: np.ndarray
) -> np.ndarray:
    """GrabCut seeds: backdrop-coloured border is certain background, colours far from it probable object.

    Pixels almost exactly the backdrop colour are certain background too (that keeps see-through holes open). Certain
    object: the eroded core of the far region (that keeps grey parts of the object in) and, however thin, every far
    pixel that is not the backdrop's hue darkened, short of its outermost pixel (that keeps thin parts GrabCut's
    edge term would cut, and leaves mixed outline pixels to GrabCut and the outline refinement). Shadow-like pixels
    start as probable background.
    """
    far = (distance >= threshold) & ~shadow
    trimap = np.where(far, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    trimap[distance < threshold / 4.0] = cv2.GC_BGD
    trimap[border & ~far] = cv2.GC_BGD
    core = cv2.erode(far.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    trimap[core] = cv2.GC_FGD
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    trimap[cv2.erode((far & ~tinted).astype(np.uint8), cross).astype(bool)] = cv2.GC_FGD
    return trimap


def _run_grabcut(rgb: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Object mask from GrabCut, run only on the box around the undecided pixels (the rest is background)."""
    top, bottom, left, right = _box_around(trimap != cv2.GC_BGD, pad=_GRABCUT_PAD)
    labels = np.ascontiguousarray(trimap[top:bottom, left:right])
    result = np.zeros(trimap.shape, dtype=bool)
    # GrabCut needs samples of both sides to fit its colour models.
    if not np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
        return result
    if not np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        result[top:bottom, left:right] = True
        return result
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    roi = np.ascontiguousarray(rgb[top:bottom, left:right])
    no_rect = (0, 0, 0, 0)  # the mask initialises the models (GC_INIT_WITH_MASK), so the rectangle is unused
    cv2.grabCut(roi, labels, no_rect, background_model, foreground_model, _GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    result[top:bottom, left:right] = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    return result


def _box_around(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    """Top, bottom, left, right (ends exclusive) of the mask's bounding box grown by `pad`, clipped."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    height, width = mask.shape
    return (
        max(int(rows[0]) - pad, 0),
        min(int(rows[-1]) + 1 + pad, height),
        max(int(cols[0]) - pad, 0),
        min(int(cols[-1]) + 1 + pad, width),
    )


def _drop_small_components(mask: np.ndarray) -> np.ndarray:
    """Drop specks: components much smaller than the largest one or than a small share of the image.

    No morphological opening, so thin parts (a stick, a leg) survive however narrow they are.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    smallest = max(_MIN_COMPONENT_FRACTION * areas.max(), _MIN_SPECK_FRACTION * mask.size)
    keep = np.concatenate([[False], areas >= smallest])
    return keep[labels]


def _fill_object_holes(mask: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Fill enclosed holes that mostly look like object (GrabCut dropouts); keep background-coloured ones."""
    count, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    if count <= 2:
        return mask
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    far_share = np.bincount(labels.ravel(), weights=far.ravel(), minlength=count) / np.bincount(
        labels.ravel(), minlength=count
    )
    fill = far_share > 0.5
    fill[0] = False  # label 0 is the object itself
    fill[edge_labels] = False
    return mask | fill[labels]


def _upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask with linear interpolation and re-threshold, so its edges come out smooth."""
    if mask.shape == shape:
        return mask
    smooth = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return smooth >= 0.5


def _refine_outline(rgb: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The coarse (working-size) mask at full size, its outline re-decided by a colour guided filter.

    The filter fits, in every small window, the mask as a linear function of the colour: where the window holds
    object and backdrop colours that differ, that is the compositing equation's opacity with the object and backdrop
    colours taken from the window itself (thin parts included); where they do not differ, it is the coarse mask's
    local mean. Pixels near the outline take the filtered mask, thresholded at one half.
    """
    image = _downscale(rgb, _REFINE_SIDE)
    shape = image.shape[:2]
    soft = cv2.resize(coarse.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    mask = soft >= 0.5
    if not mask.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _EDGE_BAND + 1, 2 * _EDGE_BAND + 1))
    as_bytes = mask.astype(np.uint8)
    band = cv2.dilate(as_bytes, kernel) > cv2.erode(as_bytes, kernel)
    top, bottom, left, right = _box_around(band, pad=2 * _GUIDED_RADIUS + 2)
    window = (slice(top, bottom), slice(left, right))
    alpha = guided_filter(image[window].astype(np.float32) / 255.0, soft[window], _GUIDED_RADIUS, _GUIDED_EPS)
    mask[window] = np.where(band[window], alpha >= 0.5, mask[window])
    return _upscale_mask(mask, rgb.shape[:2])


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's colour guided filter of `source` ((H, W) float32) by `guide` ((H, W, 3) float32).

    In each (2 radius + 1)^2 window, source = a . guide + b by ridge regression (`eps` on the colour covariance's
    diagonal); every pixel averages the (a, b) of the windows that hold it. All means are box filters, and the
    3 x 3 covariances are inverted in closed form (cofactors), so the cost is linear in the pixels.
    """
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(values, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_guide, mean_source = mean(guide), mean(source)
    covariance = mean(guide * source[..., None]) - mean_guide * mean_source[..., None]
    r, g, b = guide[..., 0], guide[..., 1], guide[..., 2]
    mr, mg, mb = mean_guide[..., 0], mean_guide[..., 1], mean_guide[..., 2]
    rr = mean(r * r) - mr * mr + eps
    rg = mean(r * g) - mr * mg
    rb = mean(r * b) - mr * mb
    gg = mean(g * g) - mg * mg + eps
    gb = mean(g * b) - mg * mb
    bb = mean(b * b) - mb * mb + eps
    # the symmetric 3 x 3 inverse: cofactors over the determinant
    inverse = (
        (gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb),
        (gb * rb - rg * bb, rr * bb - rb * rb, rb * rg - rr * gb),
        (rg * gb - gg * rb, rb * rg - rr * gb, rr * gg - rg * rg),
    )
    determinant = rr * inverse[0][0] + rg * inverse[0][1] + rb * inverse[0][2]
    cr, cg, cb = covariance[..., 0], covariance[..., 1], covariance[..., 2]
    slope = np.stack([(row[0] * cr + row[1] * cg + row[2] * cb) / determinant for row in inverse], axis=2)
    offset = mean_source - (slope * mean_guide).sum(axis=2)
    return (mean(slope) * guide).sum(axis=2) + mean(offset)


def _square_window(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """Top, left and side (in image pixels) of the square around the mask's bounding box, centred on it."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InvalidImage("no object found in the image (the mask is empty)")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    extent = max(r1 - r0, c1 - c0)
    side = max(extent, round(extent / (1.0 - 2.0 * margin)))
    return int((r0 + r1 - side) // 2), int((c0 + c1 - side) // 2), int(side)


def _crop_padded(channel: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The `side` x `side` window at (top, left), zero where it runs past the image."""
    height, width = channel.shape
    r0, r1 = max(top, 0), min(top + side, height)
    c0, c1 = max(left, 0), min(left + side, width)
    return cv2.copyMakeBorder(
        np.ascontiguousarray(channel[r0:r1, c0:c1]),
        r0 - top,
        top + side - r1,
        c0 - left,
        left + side - c1,
        cv2.BORDER_CONSTANT,
        value=0,
    )


def _unpremultiply(channels: list[np.ndarray]) -> np.ndarray:
    """Straight-alpha uint8 RGBA from premultiplied channels (scaled by 255 * 255); RGB 0 where alpha is 0."""
    premultiplied = np.stack(channels[:3], axis=2).astype(np.float32)
    coverage = channels[3].astype(np.float32)
    alpha = np.rint(coverage / 255.0)
    unscale = np.divide(255.0, coverage, out=np.zeros_like(coverage), where=alpha > 0)
    rgb = np.rint(premultiplied * unscale[..., None])
    return np.dstack([rgb, alpha]).clip(0, 255).astype(np.uint8)
