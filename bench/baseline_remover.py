"""Today's weight-free remover, frozen as the baseline of bench/quality_bench.py.

A verbatim copy of `segment_plain_background` and its helpers from src/orfeas/pipeline/background.py at commit
f56db61 (before issue 15), so the benchmark can show it beside the current remover on the same cases.
"""

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
# parts close to the background colour (grey legs on grey) but lets more of a dark matting halo in; 8 balances
# the two on the test images.
_MIN_COLOR_DISTANCE = 8.0
# Components smaller than this share of the largest one are dropped.
_MIN_COMPONENT_FRACTION = 0.005


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


def segment_plain_background(rgb: np.ndarray) -> np.ndarray:
    """Boolean object mask for a photo or render on a plain (white, gray, single-colour) background.

    The background colour is sampled from a border strip; pixels far from it seed GrabCut, which settles the
    uncertain ones on a downscaled copy. The result is upscaled smoothly and cleaned of specks. Holes that
    show the background (a torus, a teapot handle) stay open. A drop shadow clearly darker than the background
    is kept as part of the object; pass an RGBA cut-out or a learned remover for such images.
    """
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    small = _downscale(rgb, _WORK_SIDE)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    border = _border_strip(small.shape[:2], max(2, round(_BORDER_FRACTION * max(small.shape[:2]))))
    distance, threshold = _background_distance(lab, border)
    far = distance >= threshold
    if not far.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    trimap = _grabcut_trimap(distance, threshold, border)
    fg = _run_grabcut(small, trimap)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    fg = _drop_small_components(fg)
    fg = _fill_object_holes(fg, far)
    return _upscale_mask(fg, rgb.shape[:2])


def remove_background(rgba: np.ndarray, remover: BackgroundRemover | None = None) -> tuple[np.ndarray, str]:
    """Object opacity as (H, W) float32 in [0, 1] and the method that found it ("alpha", "custom", "grabcut").

    The image's alpha wins when it is a real mask; else the plug-in `remover`; else classical segmentation.
    Raises `InvalidImage` when no object can be told apart from the background.
    """
    rgba = _as_rgba(rgba)
    alpha = alpha_mask(rgba)
    if alpha is not None:
        method = "alpha"
    else:
        if remover is not None:
            alpha, method = _as_alpha(remover(rgba), rgba.shape[:2]), "custom"
        else:
            alpha, method = segment_plain_background(rgba[..., :3]).astype(np.float32), "grabcut"
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


def _background_distance(lab: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, float]:
    """Lab distance of every pixel to the background colour, and the distance beyond which a pixel is object.

    The colour is the border's median; the threshold is three times the border's median distance (a robust
    spread: for Gaussian noise that is about 4.6 sigma), but never below `_MIN_COLOR_DISTANCE`.
    """
    background = np.median(lab[border], axis=0)
    distance = np.linalg.norm(lab - background, axis=2)
    threshold = max(_MIN_COLOR_DISTANCE, 3.0 * float(np.median(distance[border])))
    return distance, threshold


def _grabcut_trimap(distance: np.ndarray, threshold: float, border: np.ndarray) -> np.ndarray:
    """GrabCut seeds: background-coloured border is certain background, colours far from it probable object.

    Pixels almost exactly the background colour are certain background too (that keeps see-through holes
    open), and the eroded core of the far region is certain object (that keeps grey parts of the object in).
    """
    far = distance >= threshold
    trimap = np.where(far, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    trimap[distance < threshold / 4.0] = cv2.GC_BGD
    trimap[border & ~far] = cv2.GC_BGD
    core = cv2.erode(far.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    trimap[core] = cv2.GC_FGD
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
    cv2.grabCut(roi, labels, None, background_model, foreground_model, _GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
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
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= _MIN_COMPONENT_FRACTION * areas.max()])
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
