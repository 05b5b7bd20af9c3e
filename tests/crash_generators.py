"""Generators for crash and memory tests, loaded by worker processes through ORFEAS_GENERATORS: one that kills its
own process the way the kernel's OOM killer ends a worker (SIGKILL: no exception, no clean-up) for any batch holding
a mostly red image, and one that declares how much memory each image needs (ORFEAS_TEST_IMAGE_BYTES)."""

from __future__ import annotations

import os
import signal

from orfeas.pipeline.generators.inflate import InflateGenerator
from orfeas.pipeline.settings import PipelineSettings


def is_red(image) -> bool:
    """True for a cut-out whose object is mostly red (the marker of the job that crashes its worker)."""
    rgb = image.rgba[..., :3][image.mask]
    return bool(rgb[:, 0].mean() > 200 and rgb[:, 1].mean() < 60)


class CrashOnRedGenerator(InflateGenerator):
    """inflate, except that a batch with a red image SIGKILLs the process running it."""

    name = "crash"

    def generate_batch(self, images, params):
        if any(is_red(image) for image in images):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate_batch(images, params)

    def memory_per_image(self, params) -> int:
        return 1  # batches are capped by ORFEAS_MAX_BATCH only, so the first claim takes the whole request


def crash_on_red(settings: PipelineSettings) -> CrashOnRedGenerator:
    return CrashOnRedGenerator()


class DeclaredMemoryGenerator(InflateGenerator):
    """inflate that tells the batch sizing each image needs ORFEAS_TEST_IMAGE_BYTES."""

    name = "declared"

    def __init__(self, per_image_bytes: int):
        self.per_image_bytes = per_image_bytes

    def memory_per_image(self, params) -> int:
        return self.per_image_bytes


def declared_memory(settings: PipelineSettings) -> DeclaredMemoryGenerator:
    return DeclaredMemoryGenerator(int(os.environ["ORFEAS_TEST_IMAGE_BYTES"]))
