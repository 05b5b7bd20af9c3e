"""Load and validate an input image: PNG, JPEG, WebP or GIF in, an (H, W, 4) uint8 RGBA array out.

Every way an upload can be unusable (not an image, an unsupported format, truncated, zero-sized, larger
than the pixel budget) becomes an `InvalidImage` with a message a user can act on. The pixel budget is checked
against the header before any pixels are decoded, so a decompression bomb costs nothing.

Animated images (APNG, animated WebP, GIF) are accepted: we take the first frame and log a warning, since a still
picture of the object is what the rest of the pipeline needs.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from orfeas.errors import InvalidImage

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# What the loaders read: a path or the file's bytes.
ImageSource = str | os.PathLike[str] | bytes

# Modes holding more than 8 bits per sample as integers; PNG 16-bit grayscale opens as one of these.
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def load_image(source: ImageSource, *, max_pixels: int = 40_000_000) -> np.ndarray:
    """Read `source` (a path or the file's bytes) into an (H, W, 4) uint8 RGBA array with straight alpha.

    EXIF orientation is applied; opaque images get alpha 255. Raises `InvalidImage` for unusable input.
    """
    with _open(source, max_pixels) as img:
        _check_format(img)
        _check_size(img, max_pixels)
        _select_first_frame(img)
        _decode(img)
        return _to_rgba(_apply_orientation(img))


@dataclass(frozen=True)
class ImageInfo:
    """What validation learned about an image without keeping its pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect_image(source: ImageSource, *, max_pixels: int = 40_000_000) -> ImageInfo:
    """Check that `source` is a usable image (format, size, pixel data that decodes) and return its header facts.

    Unlike `load_image` nothing is converted or kept: JPEGs decode at reduced scale (the DCT draft mode still reads
    every block), other formats decode once in their native mode and are dropped at once.
    """
    with _open(source, max_pixels) as img:
        info = _checked_header(img, max_pixels)
        _select_first_frame(img)
        if info.format == "JPEG":
            img.draft(img.mode, (max(1, info.width // 8), max(1, info.height // 8)))
        _decode(img)
        return info


def read_header(source: ImageSource, *, max_pixels: int = 40_000_000) -> ImageInfo:
    """Format and size from the header alone (nothing decoded); InvalidImage as `load_image` would raise it."""
    with _open(source, max_pixels) as img:
        return _checked_header(img, max_pixels)


def decoded_bytes(info: ImageInfo) -> int:
    """An upper bound of the memory decoding this image holds at once (16-bit RGBA, the widest mode we take)."""
    return info.pixels * 8


def _checked_header(img: Image.Image, max_pixels: int) -> ImageInfo:
    image_format = _check_format(img)
    _check_size(img, max_pixels)
    width, height = img.size
    return ImageInfo(format=image_format, width=width, height=height)


def _open(source: ImageSource, max_pixels: int) -> Image.Image:
    """Open the image lazily (header only); map every failure to `InvalidImage`."""
    fp: str | io.BytesIO
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise InvalidImage("empty image data")
        fp, name = io.BytesIO(bytes(source)), "image data"
    else:
        path = name = os.fspath(source)
        if not os.path.isfile(path):
            raise InvalidImage(f"file not found: {path}")
        if os.path.getsize(path) == 0:
            raise InvalidImage(f"empty file: {path}")
        fp = path
    # Our own pixel budget (checked right after opening) is the authority, so PIL's warning is silenced here;
    # its hard error for absurd sizes is still mapped to a readable message.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombError as exc:
            raise InvalidImage(f"image is too large: {exc}; the limit is {max_pixels} pixels") from exc
        except UnidentifiedImageError as exc:
            raise InvalidImage(f"{name} is not a recognised image") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImage(f"cannot read {name}: {exc}") from exc


def _check_format(img: Image.Image) -> str:
    """The image's format, one of ACCEPTED_FORMATS; InvalidImage for any other."""
    if img.format is None or img.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(ACCEPTED_FORMATS)
        found = img.format or "unknown"
        raise InvalidImage(f"unsupported image format {found}; accepted formats: {accepted}")
    return img.format


def _check_size(img: Image.Image, max_pixels: int) -> None:
    """Refuse empty images and images over the pixel budget, from the header alone."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(f"image is too large: {width}x{height} pixels, the limit is {max_pixels} pixels")


def _select_first_frame(img: Image.Image) -> None:
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        logger.warning("animated %s with %d frames: using the first frame", img.format, frames)
        img.seek(0)


def _decode(img: Image.Image) -> None:
    """Force a full decode so truncated or corrupt pixel data fails here, not later in the pipeline."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"image data is truncated or corrupt: {exc}") from exc


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Rotate or flip the pixels as the EXIF Orientation tag says; a malformed EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return img


def _to_rgba(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to 8-bit RGBA, scaling wide integer samples instead of clipping them."""
    if img.mode in _WIDE_INT_MODES:
        gray = _wide_to_uint8(np.asarray(img))
        alpha = np.full_like(gray, 255)
        return np.ascontiguousarray(np.stack([gray, gray, gray, alpha], axis=-1))
    if img.mode == "CMYK":
        img = img.convert("RGB")  # the JPEG decoder has already undone Adobe's inverted CMYK
    return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8))


def _wide_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit samples (0..65535) to 8-bit: divide by 257 so 65535 -> 255 and 32768 -> 128."""
    wide = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(wide / 257.0).astype(np.uint8)
