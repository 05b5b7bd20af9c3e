"""Tests for `orfeas.pipeline.background`: which mask is used, segmentation quality, the square cut-out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from orfeas.errors import InvalidImage
from orfeas.pipeline.background import (
    Cutout,
    alpha_mask,
    crop_to_object,
    prepare_image,
    remove_background,
    segment_studio_background,
)
from tests.synthetic import EXAMPLES as SHARED_IMAGES  # copies of ../shared/images kept in the repo

OBJECT_COLOUR = (200, 60, 40)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2


def on_background(mask: np.ndarray, background: int, noise: float = 0.0) -> np.ndarray:
    """An RGB image: `mask` in the object colour on a plain background, with optional Gaussian noise."""
    rgb = np.full((*mask.shape, 3), background, dtype=np.float64)
    rgb[mask] = OBJECT_COLOUR
    if noise:
        rgb += np.random.default_rng(0).normal(0.0, noise, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def with_alpha(rgb: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
    return np.dstack([rgb, np.broadcast_to(np.asarray(alpha, dtype=np.uint8), rgb.shape[:2])])


def reference_mask(rgb: np.ndarray, tolerance: int = 10) -> np.ndarray:
    """Pixels differing from the gray (127) background by more than `tolerance`, minus specks.

    A fair reference for the shared gray images, whose background is exactly 127 away from the object, but not
    an exact one: it keeps the object's dark matting halo and loses object parts within `tolerance` of gray.
    """
    differs = (np.abs(rgb.astype(int) - 127) > tolerance).any(axis=2)
    labels, count = ndimage.label(differs)
    sizes = ndimage.sum(differs, labels, range(1, count + 1))
    keep = np.concatenate([[False], sizes >= 0.005 * sizes.max()])
    return keep[labels]


def load_shared(name: str) -> np.ndarray:
    return np.asarray(Image.open(SHARED_IMAGES / name).convert("RGBA"))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.fixture
def disc_mask() -> np.ndarray:
    return disc((300, 400), (140, 210), 90)


def test_alpha_mask_found_in_cutout(disc_mask):
    rgba = with_alpha(on_background(disc_mask, 0), np.where(disc_mask, 255, 0))
    alpha = alpha_mask(rgba)
    assert alpha is not None
    assert alpha.dtype == np.float32
    np.testing.assert_array_equal(alpha >= 0.5, disc_mask)


@pytest.mark.parametrize("alpha", [255, 0, 200])
def test_alpha_mask_ignores_uniform_alpha(disc_mask, alpha):
    assert alpha_mask(with_alpha(on_background(disc_mask, 127), alpha)) is None


def test_alpha_mask_ignores_a_few_transparent_pixels(disc_mask):
    alpha = np.full(disc_mask.shape, 255, dtype=np.uint8)
    alpha[:2, :50] = 0  # 100 pixels of 120 000: a stray edge, not a mask
    assert alpha_mask(with_alpha(on_background(disc_mask, 127), alpha)) is None


@pytest.mark.parametrize("background", [127, 255, 30])
@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_segments_disc_on_plain_background(disc_mask, background, noise):
    mask = segment_studio_background(on_background(disc_mask, background, noise))
    assert mask.dtype == bool
    assert mask.shape == disc_mask.shape
    assert iou(mask, disc_mask) >= 0.97


@pytest.mark.parametrize("background", [127, 255])
def test_ring_keeps_its_hole(background):
    outer = disc((360, 360), (180, 180), 140)
    hole = disc((360, 360), (180, 180), 60)
    ring = outer & ~hole

    mask = segment_studio_background(on_background(ring, background, noise=2.0))

    assert iou(mask, ring) >= 0.97
    assert not mask[disc((360, 360), (180, 180), 55)].any()  # the hole, short of its anti-aliased rim


def test_keeps_grayish_parts_distinct_from_background(disc_mask):
    # Bluish gray like the fox's legs: clearly visible on gray 127 but close to it in brightness.
    legs = np.zeros_like(disc_mask)
    legs[220:290, 170:190] = legs[220:290, 230:250] = True
    rgb = on_background(disc_mask, 127)
    rgb[legs] = (90, 88, 106)

    mask = segment_studio_background(rgb)

    assert mask[legs].mean() > 0.9
    assert iou(mask, disc_mask | legs) >= 0.95


@pytest.mark.parametrize(("name", "fraction_range"), [("poly_fox.png", (0.2, 0.35)), ("teapot.png", (0.18, 0.32))])
def test_segments_shared_gray_images(name, fraction_range):
    rgb = load_shared(name)[..., :3]

    mask = segment_studio_background(rgb)

    low, high = fraction_range
    assert low < mask.mean() < high
    assert iou(mask, reference_mask(rgb)) >= 0.9
    assert not mask[:5].any() and not mask[-5:].any()  # the gray border is background


def test_teapot_handle_hole_stays_open():
    rgb = load_shared("teapot.png")[..., :3]
    mask = segment_studio_background(rgb)
    # The see-through part of the handle, measured on the image (plain 127 gray surrounded by the handle).
    handle_hole = (slice(400, 440), slice(700, 740))
    assert (rgb[handle_hole] == 127).all()
    assert not mask[handle_hole].any()
    labels, _ = ndimage.label(~mask)
    hole_label = labels[420, 720]
    outside_labels = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    assert hole_label not in outside_labels  # enclosed by the handle, so it is the hole and not the outside


def test_remove_background_uses_real_alpha(disc_mask):
    rgba = with_alpha(on_background(disc_mask, 127), np.where(disc_mask, 255, 0))

    def must_not_run(image):
        raise AssertionError("the remover must not run when the image has a real alpha mask")

    alpha, method = remove_background(rgba, must_not_run)

    assert method == "alpha"
    np.testing.assert_array_equal(alpha >= 0.5, disc_mask)


def test_remove_background_segments_opaque_image(disc_mask):
    alpha, method = remove_background(with_alpha(on_background(disc_mask, 255)))
    assert method == "grabcut"
    assert alpha.dtype == np.float32
    assert iou(alpha >= 0.5, disc_mask) >= 0.97


def test_remove_background_accepts_rgb(disc_mask):
    alpha, method = remove_background(on_background(disc_mask, 255))
    assert method == "grabcut"
    assert iou(alpha >= 0.5, disc_mask) >= 0.97


@pytest.mark.parametrize("as_bool", [True, False])
def test_remove_background_uses_custom_remover(disc_mask, as_bool):
    square = np.zeros(disc_mask.shape, dtype=bool)
    square[50:150, 100:200] = True
    calls = []

    def remover(rgba: np.ndarray) -> np.ndarray:
        calls.append(rgba.shape)
        return square if as_bool else square.astype(np.float32) * 0.9

    alpha, method = remove_background(with_alpha(on_background(disc_mask, 127)), remover)

    assert method == "custom"
    assert calls == [(*disc_mask.shape, 4)]
    np.testing.assert_array_equal(alpha >= 0.5, square)


def test_remove_background_rejects_remover_output_of_wrong_shape(disc_mask):
    with pytest.raises(ValueError, match="shape"):
        remove_background(with_alpha(on_background(disc_mask, 127)), lambda rgba: np.ones((3, 3)))


@pytest.mark.parametrize("background", [127, 255])
def test_all_background_image_is_refused(background):
    plain = np.full((200, 300, 3), background, dtype=np.uint8)
    with pytest.raises(InvalidImage, match="no object found"):
        remove_background(plain)


def test_mask_covering_everything_is_refused(disc_mask):
    rgba = with_alpha(on_background(disc_mask, 127))
    with pytest.raises(InvalidImage, match="no object found"):
        remove_background(rgba, lambda image: np.ones(image.shape[:2], dtype=bool))


@pytest.mark.parametrize(("size", "margin"), [(512, 0.05), (256, 0.1), (128, 0.0)])
@pytest.mark.parametrize(
    "box",
    [
        (100, 160, 50, 250),  # wide, inside the image
        (20, 280, 300, 340),  # tall, reaching near the top and bottom edges
        (0, 40, 0, 400),  # touching three edges: the square window runs past the image
    ],
)
def test_crop_centres_object_and_sizes_it(size, margin, box):
    top, bottom, left, right = box
    mask = np.zeros((300, 400), dtype=bool)
    mask[top:bottom, left:right] = True
    rgba = with_alpha(on_background(mask, 0), np.where(mask, 255, 0))

    cutout = crop_to_object(rgba, mask.astype(np.float32), size=size, margin=margin)

    assert isinstance(cutout, Cutout)
    assert cutout.rgba.shape == (size, size, 4)
    assert cutout.rgba.dtype == np.uint8
    r0, r1, c0, c1 = bbox(cutout.mask)
    long_side = max(r1 - r0, c1 - c0)
    assert abs(long_side - (1 - 2 * margin) * size) <= 2
    assert abs((r0 + r1) / 2 - size / 2) <= 1.5
    assert abs((c0 + c1) / 2 - size / 2) <= 1.5


@pytest.mark.parametrize("size", [64, 1024])  # shrinking (INTER_AREA) and enlarging (INTER_LINEAR)
def test_crop_has_no_fringe_from_transparent_pixels(disc_mask, size):
    rgb = on_background(disc_mask, 0)
    rgb[~disc_mask] = (0, 0, 255)  # garbage colour under zero alpha must not bleed into the edge
    soft_alpha = np.where(disc_mask, 255, 0).astype(np.uint8)

    cutout = crop_to_object(with_alpha(rgb, soft_alpha), soft_alpha / 255.0, size=size)

    visible = cutout.rgba[..., 3] > 0
    edge = visible & (cutout.rgba[..., 3] < 255)
    assert edge.any()
    np.testing.assert_allclose(cutout.rgba[edge][:, :3], np.broadcast_to(OBJECT_COLOUR, (edge.sum(), 3)), atol=2)
    assert (cutout.rgba[~visible][:, :3] == 0).all()


def test_crop_uses_given_alpha_and_method(disc_mask):
    rgba = with_alpha(on_background(disc_mask, 127))
    cutout = crop_to_object(rgba, disc_mask.astype(np.float32), size=64, method="grabcut")
    assert cutout.method == "grabcut"
    assert cutout.mask[32, 32] and not cutout.mask[0, 0]
    np.testing.assert_array_equal(cutout.rgba[0, 0], [0, 0, 0, 0])


@pytest.mark.parametrize("margin", [-0.1, 0.5])
def test_crop_rejects_bad_margin(disc_mask, margin):
    with pytest.raises(ValueError, match="margin"):
        crop_to_object(with_alpha(on_background(disc_mask, 0)), disc_mask.astype(np.float32), margin=margin)


def test_prepare_image_synthetic(disc_mask):
    cutout = prepare_image(with_alpha(on_background(disc_mask, 255)), size=200, margin=0.1)
    assert cutout.method == "grabcut"
    assert cutout.size == 200
    r0, r1, c0, c1 = bbox(cutout.mask)
    assert abs((r1 - r0) - 160) <= 2 and abs((c1 - c0) - 160) <= 2


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("chair.png", "alpha"),
        ("flamingo.png", "alpha"),
        ("hamburger.png", "alpha"),
        ("robot.png", "alpha"),
        ("poly_fox.png", "grabcut"),
        ("teapot.png", "grabcut"),
    ],
)
def test_prepare_image_shared(name, method):
    cutout = prepare_image(load_shared(name))

    assert cutout.method == method
    assert cutout.rgba.shape == (512, 512, 4)
    r0, r1, c0, c1 = bbox(cutout.mask)
    assert abs(max(r1 - r0, c1 - c0) - 0.9 * 512) <= 2
    assert 0.1 < cutout.mask.mean() < 0.8


# Studio photos: sweeps, spots and shadows are backdrop; the object keeps thin parts and far-coloured stripes.


def studio_sweep(shape: tuple[int, int], top: float = 235.0, bottom: float = 70.0) -> np.ndarray:
    """A light-to-dark vertical studio gradient (float RGB, 0-255)."""
    level = np.linspace(top, bottom, shape[0])[:, None, None]
    return np.broadcast_to(level, (*shape, 3)).astype(np.float64).copy()


def soft_shadow(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], blur: float) -> np.ndarray:
    """Shadow strength (0-1) of a blurred elliptical floor shadow."""
    strength = np.zeros(shape, np.float32)
    cv2.ellipse(strength, (centre[1], centre[0]), axes, 0, 0, 360, 1.0, -1)
    strength = cv2.GaussianBlur(strength, (0, 0), blur)
    return strength / strength.max()


def photo(rgb: np.ndarray, noise: float = 2.0) -> np.ndarray:
    rgb = rgb + np.random.default_rng(1).normal(0.0, noise, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_a_disc_with_a_floor_shadow_on_a_sweep_comes_out_without_shadow_or_backdrop():
    shape = (360, 360)
    disc_ = disc(shape, (160, 180), 80)
    backdrop = studio_sweep(shape)
    backdrop *= 1.0 - 0.6 * soft_shadow(shape, (250, 195), (90, 22), 12.0)[..., None]
    rgb = backdrop.copy()
    rgb[disc_] = OBJECT_COLOUR

    mask = segment_studio_background(photo(rgb))

    assert iou(mask, disc_) >= 0.97
    assert not mask[265:280].any()  # the shadow's core, below the disc


@pytest.mark.parametrize("spot", [True, False])
def test_a_spot_lit_or_vignetted_backdrop_is_backdrop(spot):
    shape = (320, 400)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    radius = np.hypot(rows - 150, cols - 210) / np.hypot(*shape)
    level = 80 + 170 * np.exp(-((radius / 0.4) ** 2)) if spot else 245 * (1 - 0.15 * (radius / radius.max()) ** 2)
    rgb = np.repeat(level[..., None], 3, axis=2)
    box = np.zeros(shape, dtype=bool)
    box[100:220, 150:260] = True
    rgb[box] = (60, 90, 200)

    assert iou(segment_studio_background(photo(rgb)), box) >= 0.97


def test_a_black_and_white_striped_object_on_grey_has_no_holes():
    shape = (360, 300)
    body = np.zeros(shape, dtype=bool)
    body[60:300, 80:220] = True
    rgb = np.full((*shape, 3), 128.0)
    stripes = (np.arange(shape[0]) // 12) % 2 == 0
    rgb[body & stripes[:, None]] = 20
    rgb[body & ~stripes[:, None]] = 240

    mask = segment_studio_background(photo(rgb))

    assert iou(mask, body) >= 0.97
    assert ndimage.binary_fill_holes(mask).sum() - mask.sum() < 0.001 * body.sum()


def test_a_thin_stick_touching_a_box_is_kept_to_its_tip():
    shape = (320, 400)
    box = np.zeros(shape, dtype=bool)
    box[140:260, 80:200] = True
    stick = np.zeros(shape, dtype=bool)
    stick[190:193, 200:360] = True  # three pixels wide, leaving the box's side
    rgb = np.full((*shape, 3), 245.0)
    rgb[box] = (180, 70, 50)
    rgb[stick] = (40, 40, 40)

    mask = segment_studio_background(photo(rgb))

    assert mask[stick].mean() > 0.9
    assert mask[190:193, 350:360].any()  # the tip
    assert iou(mask, box | stick) >= 0.97


def test_a_pale_part_the_object_surrounds_is_not_taken_for_a_shadow():
    # a light grey panel framed by a dark frame on white: its own shading, not a shadow on the floor
    shape = (320, 320)
    frame = np.zeros(shape, dtype=bool)
    frame[60:260, 60:260] = True
    panel = np.zeros(shape, dtype=bool)
    panel[80:240, 80:240] = True
    rgb = np.full((*shape, 3), 250.0)
    rgb[frame] = (70, 50, 40)
    rgb[panel] = 205.0

    assert iou(segment_studio_background(photo(rgb)), frame) >= 0.97


def test_a_hole_that_shows_the_sweep_stays_open():
    shape = (360, 360)
    outer, hole = disc(shape, (180, 180), 140), disc(shape, (180, 180), 60)
    rgb = studio_sweep(shape)
    rgb[outer & ~hole] = OBJECT_COLOUR

    mask = segment_studio_background(photo(rgb))

    assert iou(mask, outer & ~hole) >= 0.97
    assert not mask[disc(shape, (180, 180), 55)].any()
