"""Headless Chromium for the studio tests: find the system browser, launch it, read pixels and save screenshots.

We drive the distribution's Chromium (`apt-get install chromium`) through Playwright instead of the browsers
`playwright install` downloads, so the tests run on machines without internet access.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import REPO

ARTIFACTS = REPO / "test-artifacts" / "studio"
README_SCREENSHOT = REPO / "docs" / "images" / "studio.png"
INSTALL_HINT = "install it with `apt-get install chromium` (or set ORFEAS_CHROMIUM to a Chromium binary)"

# Headless in a container: no sandbox (we often run as root), no GPU, and no background traffic to Google.
# WebGL then runs on SwiftShader, ANGLE's CPU renderer, which Chromium only enables when asked explicitly.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def chromium_path() -> str | None:
    """The Chromium binary to drive: ORFEAS_CHROMIUM if set, otherwise the first one on PATH."""
    if os.environ.get("ORFEAS_CHROMIUM"):
        return os.environ["ORFEAS_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright):
    """Launch headless Chromium, or skip the test with instructions when there is none."""
    path = chromium_path()
    if path is None or not os.access(path, os.X_OK):
        pytest.skip(f"no Chromium binary found{f' at {path}' if path else ''}: {INSTALL_HINT}")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)


def screenshot(page, name: str) -> Path:
    """Save the whole page as test-artifacts/studio/<name>.png (CI keeps that folder) and return the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def canvas_pixels(page, selector: str = "#viewer canvas") -> np.ndarray:
    """The canvas's current pixels as an RGBA array; needs a WebGL context with preserveDrawingBuffer."""
    url = page.eval_on_selector(selector, "canvas => canvas.toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def background_fraction(pixels: np.ndarray, tolerance: int = 8) -> float:
    """Share of pixels equal (within `tolerance` per channel) to the most common colour on the border.

    The border of a framed model is background, so its most common colour is the clear colour (or the most
    common shade of a gradient backdrop, which is why the test also compares images rather than only this).
    """
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(int)
    colors, counts = np.unique(border, axis=0, return_counts=True)
    background = colors[np.argmax(counts)]
    close = np.all(np.abs(pixels.astype(int) - background) <= tolerance, axis=-1)
    return float(close.mean())


def changed_fraction(before: np.ndarray, after: np.ndarray, tolerance: int = 8) -> float:
    """Share of pixels that differ by more than `tolerance` in some channel between two same-size images."""
    assert before.shape == after.shape, (before.shape, after.shape)
    return float(np.any(np.abs(before.astype(int) - after.astype(int)) > tolerance, axis=-1).mean())
