"""The generator interface: a batch of prepared cut-outs in, one shape per image out.

The service owns batching (it decides which images travel together); a generator only receives a list. A shape is
either an implicit field sampled on a grid (extracted later by `pipeline.extract`) or a finished mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import trimesh

from orfeas.errors import Stopped
from orfeas.pipeline.background import Cutout


@dataclass(frozen=True)
class GenerationParams:
    """What a generator needs to know about the request besides the images."""

    resolution: int = 256
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()  # one per image when the jobs of a batch asked for different seeds
    should_stop: Callable[[], bool] | None = field(default=None, compare=False)

    def check_stop(self) -> None:
        """Raise Stopped when the caller no longer wants the result; generators call it between steps."""
        if self.should_stop is not None and self.should_stop():
            raise Stopped("generation stopped: every job of the batch was canceled")

    def seed_for(self, index: int) -> int:
        """The seed of image `index` in the batch."""
        return self.seeds[index] if index < len(self.seeds) else self.seed


@dataclass(frozen=True)
class GridField:
    """An implicit field sampled on a regular grid: negative inside the object, positive outside.

    `values[i, j, k]` is the field at world point `origin + (i, j, k) * spacing`; world axes are X right, Y up and
    Z toward the camera that took the input image.
    """

    values: np.ndarray
    origin: tuple[float, float, float]
    spacing: float

    def __post_init__(self) -> None:
        if self.values.ndim != 3:
            raise ValueError(f"field values must be 3-D, got shape {self.values.shape}")


Shape = GridField | trimesh.Trimesh


@runtime_checkable
class Generator(Protocol):
    """A shape generator. Implementations hold their own components (weights, caches) once built; building one
    must be cheap (load weights on first use), since the service builds one to check options."""

    name: str
    default_resolution: int

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise InvalidOptions for generator options this generator does not accept (called before queueing)."""
        ...

    def generate_batch(self, images: Sequence[Cutout], params: GenerationParams) -> list[Shape]:
        """Return one shape per input image, in order."""
        ...

    def memory_per_image(self, params: GenerationParams) -> int:
        """Estimated peak working memory in bytes for one image at these params (the service sizes batches)."""
        ...
