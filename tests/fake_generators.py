"""Generators for service tests, loaded by a server subprocess through ORFEAS_GENERATORS.

They wrap `inflate` and add the behaviour a test needs: slowness (to kill a server mid-batch), out-of-memory
errors (to exercise batch splitting), or a fixed wait per batch and no CPU work (cluster tests and benchmarks).
"""

from __future__ import annotations

import os
import time

import trimesh

from orfeas.pipeline.generators.inflate import InflateGenerator
from orfeas.pipeline.settings import PipelineSettings


class SlowGenerator(InflateGenerator):
    """inflate plus ORFEAS_TEST_DELAY seconds per image."""

    name = "slow"

    def __init__(self, delay: float):
        self.delay = delay

    def generate_batch(self, images, params):
        time.sleep(self.delay * len(images))
        return super().generate_batch(images, params)


class MemoryLimitedGenerator(InflateGenerator):
    """inflate that runs out of memory on batches over ORFEAS_TEST_OOM_LIMIT images, or on any batch holding a
    mostly red image (a job that cannot run even alone)."""

    name = "oom"

    def __init__(self, limit: int):
        self.limit = limit
        self.batch_sizes: list[int] = []

    def generate_batch(self, images, params):
        if len(images) > self.limit:
            raise MemoryError(f"batch of {len(images)} images needs more memory than the test allows")
        for image in images:
            rgb = image.rgba[..., :3][image.mask]
            if rgb[:, 0].mean() > 200 and rgb[:, 1].mean() < 60:
                raise MemoryError("this image needs more memory than the device has")
        return super().generate_batch(images, params)

    def memory_per_image(self, params) -> int:
        return 1  # let the batch sizer choose large batches, so the split path runs


class SleepyGenerator(InflateGenerator):
    """A small sphere per image after sleeping ORFEAS_TEST_BATCH_DELAY seconds per batch plus ORFEAS_TEST_DELAY per
    image: almost no CPU, so several worker processes on a 2-core machine scale on the generator's wait, the way GPU
    workers do, rather than competing for the cores."""

    name = "sleepy"

    def __init__(self, batch_delay: float, delay: float):
        self.batch_delay = batch_delay
        self.delay = delay

    def generate_batch(self, images, params):
        deadline = time.monotonic() + self.batch_delay + self.delay * len(images)
        while time.monotonic() < deadline:  # in steps, asking whether to stop as a real generator does
            params.check_stop()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return [trimesh.creation.icosphere(subdivisions=2) for _ in images]

    def memory_per_image(self, params) -> int:
        return 1  # batches are capped by ORFEAS_MAX_BATCH only


def slow(settings: PipelineSettings) -> SlowGenerator:
    return SlowGenerator(float(os.environ.get("ORFEAS_TEST_DELAY", "0.5")))


def memory_limited(settings: PipelineSettings) -> MemoryLimitedGenerator:
    return MemoryLimitedGenerator(int(os.environ.get("ORFEAS_TEST_OOM_LIMIT", "2")))


def sleepy(settings: PipelineSettings) -> SleepyGenerator:
    return SleepyGenerator(
        float(os.environ.get("ORFEAS_TEST_BATCH_DELAY", "0.3")), float(os.environ.get("ORFEAS_TEST_DELAY", "0.02"))
    )
