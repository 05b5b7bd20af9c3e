"""Tests for `orfeas.pipeline.image`: accepted formats, colour conversions and every refusal."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from orfeas.errors import InvalidImage
from orfeas.pipeline.image import inspect_image, load_image
from tests.synthetic import EXAMPLES


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR (CRC fixed up) claims `width` x `height` pixels."""
    data = bytearray(encode(Image.new("RGB", (4, 4), (10, 20, 30)), "PNG"))
    # Signature (8 bytes), chunk length (4), "IHDR" (4), then width and height; the CRC covers type + data.
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def gradient_rgb() -> Image.Image:
    """A 24 x 16 RGB image whose colour varies along both axes, so rotations and flips are visible."""
    rows, cols = np.mgrid[0:16, 0:24]
    pixels = np.stack([cols * 10, rows * 15, np.full_like(rows, 100)], axis=2).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [("PNG", {}, 0), ("JPEG", {"quality": 95}, 12), ("WEBP", {"lossless": True}, 0)],
)
@pytest.mark.parametrize("as_path", [True, False])
def test_loads_accepted_formats(tmp_path, gradient_rgb, fmt, options, tolerance, as_path):
    data = encode(gradient_rgb, fmt, **options)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data)

    rgba = load_image(path if as_path else data)

    assert rgba.shape == (16, 24, 4)
    assert rgba.dtype == np.uint8
    assert (rgba[..., 3] == 255).all()
    difference = np.abs(rgba[..., :3].astype(int) - np.asarray(gradient_rgb, dtype=int))
    assert difference.max() <= tolerance


def test_accepts_str_path(tmp_path, gradient_rgb):
    path = tmp_path / "image.png"
    gradient_rgb.save(path)
    assert load_image(str(path)).shape == (16, 24, 4)


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_keeps_straight_alpha(fmt, options):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = np.arange(8, dtype=np.uint8)[None, :] * 36

    rgba = load_image(encode(Image.fromarray(pixels, "RGBA"), fmt, **options))

    np.testing.assert_array_equal(rgba[..., 3], pixels[..., 3])
    np.testing.assert_array_equal(rgba[..., 0][pixels[..., 3] > 0], 200)


def test_applies_exif_orientation():
    # 40 wide x 20 high, blue on the left quarter; Orientation 6: "rotate 90 degrees clockwise to display".
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6

    rgba = load_image(encode(image, "JPEG", exif=exif, quality=95))

    assert rgba.shape == (40, 20, 4)
    assert rgba[2, 10, 2] > 200 and rgba[2, 10, 0] < 50  # the left edge is now on top
    assert rgba[-2, 10, 0] > 200 and rgba[-2, 10, 2] < 50


def test_scales_16_bit_grayscale_png():
    samples = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(samples)
    assert image.mode.startswith("I;16")

    rgba = load_image(encode(image, "PNG"))

    np.testing.assert_array_equal(rgba[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(rgba[0, :, 0], rgba[0, :, 2])
    assert (rgba[..., 3] == 255).all()


@pytest.mark.parametrize("channels", [3, 4])
def test_scales_16_bit_colour_png(channels):
    samples = np.zeros((2, 2, channels), dtype=np.uint16)
    samples[0, 0, :3] = (0, 32768, 65535)  # OpenCV writes BGR: this is R=65535, G=32768, B=0
    if channels == 4:
        samples[..., 3] = 65535
    ok, encoded = cv2.imencode(".png", samples)
    assert ok

    rgba = load_image(encoded.tobytes())

    np.testing.assert_array_equal(rgba[0, 0], [255, 128, 0, 255])


def test_converts_cmyk_jpeg():
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))

    rgba = load_image(encode(cyan, "JPEG", quality=100))

    np.testing.assert_allclose(rgba[8, 8], [0, 255, 255, 255], atol=3)


def test_palette_transparency_becomes_alpha():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 2), 1)

    rgba = load_image(encode(image, "PNG", transparency=0))

    expected_alpha = np.zeros((4, 4), dtype=np.uint8)
    expected_alpha[2, 1] = 255
    np.testing.assert_array_equal(rgba[..., 3], expected_alpha)
    np.testing.assert_array_equal(rgba[2, 1], [0, 255, 0, 255])


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [("L", 90, [90, 90, 90, 255]), ("LA", (90, 60), [90, 90, 90, 60]), ("1", 1, [255, 255, 255, 255])],
)
def test_converts_gray_modes(mode, colour, expected):
    rgba = load_image(encode(Image.new(mode, (3, 3), colour), "PNG"))
    np.testing.assert_array_equal(rgba[1, 1], expected)


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {})])
def test_animated_image_uses_first_frame(fmt, options, caplog):
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    with caplog.at_level(logging.WARNING, logger="orfeas.pipeline.image"):
        rgba = load_image(data)

    np.testing.assert_array_equal(rgba[3, 4], [255, 0, 0, 255])
    assert "first frame" in caplog.text


def test_refuses_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InvalidImage, match="not a recognised image"):
        load_image(path)


def test_refuses_truncated_png():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (7_000, 7_000),  # over our default budget, under PIL's own limits
        (10_000, 10_000),  # PIL would warn here; our message must come instead
        (100_000, 100_000),  # PIL refuses outright
    ],
)
def test_refuses_header_claiming_huge_size(width, height):
    data = png_with_header_size(width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidImage, match="too large"):
            load_image(data)


def test_refuses_image_over_max_pixels():
    data = encode(Image.new("RGB", (3, 2)), "PNG")
    assert load_image(data, max_pixels=6).shape == (2, 3, 4)
    with pytest.raises(InvalidImage, match=r"too large: 3x2 pixels, the limit is 5"):
        load_image(data, max_pixels=5)


@pytest.mark.parametrize(("width", "height"), [(0, 4), (4, 0)])
def test_refuses_zero_width_or_height(width, height):
    with pytest.raises(InvalidImage):
        load_image(png_with_header_size(width, height))


def test_refuses_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty file"):
        load_image(path)


def test_refuses_empty_bytes():
    with pytest.raises(InvalidImage, match="empty image data"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_refuses_unsupported_format(fmt):
    data = encode(Image.new("RGB", (4, 4), (1, 2, 3)), fmt)
    with pytest.raises(InvalidImage, match=rf"unsupported image format {fmt}.*PNG, JPEG, WEBP, GIF"):
        load_image(data)
    with pytest.raises(InvalidImage, match="unsupported image format"):
        inspect_image(data)


def test_gif_transparency_becomes_alpha():
    image = Image.new("P", (6, 4), 0)
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    image.paste(1, (2, 0, 6, 4))
    rgba = load_image(encode(image, "GIF", transparency=0))
    assert (rgba[:, :2, 3] == 0).all()
    np.testing.assert_array_equal(rgba[0, 4], [200, 30, 40, 255])


@pytest.mark.parametrize(
    ("fmt", "options"), [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"lossless": True}), ("GIF", {})]
)
def test_inspect_image_reports_header_facts_of_accepted_formats(gradient_rgb, fmt, options):
    info = inspect_image(encode(gradient_rgb, fmt, **options))
    assert (info.format, info.width, info.height) == (fmt, 24, 16)


def test_inspect_image_refuses_what_load_image_refuses():
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    truncated = encode(Image.fromarray(big), "PNG")[:-200]
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        inspect_image(truncated)
    jpeg = encode(Image.fromarray(big), "JPEG")
    with pytest.raises(InvalidImage):
        inspect_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(InvalidImage, match="too large"):
        inspect_image(png_with_header_size(10_000, 10_000), max_pixels=1_000_000)


def test_refuses_missing_file(tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(InvalidImage, match=r"file not found: .*nowhere\.png"):
        load_image(missing)


@pytest.mark.parametrize(
    ("name", "has_mask"),
    [("chair.png", True), ("robot.png", True), ("poly_fox.png", False), ("teapot.png", False)],
)
def test_loads_shared_images(name, has_mask):
    rgba = load_image(EXAMPLES / name)
    assert rgba.ndim == 3 and rgba.shape[2] == 4
    assert (rgba[..., 3] < 128).any() == has_mask
