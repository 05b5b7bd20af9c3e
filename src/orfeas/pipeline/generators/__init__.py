"""Shape generators and the registry that builds them by name."""

from __future__ import annotations

from orfeas.config import Settings
from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.generators.base import GenerationParams, Generator, GridField, Shape
from orfeas.pipeline.generators.inflate import InflateGenerator

__all__ = [
    "GenerationParams",
    "Generator",
    "GridField",
    "Shape",
    "available_generators",
    "create_generator",
]


def available_generators() -> list[str]:
    """Names of the generators that can run on this machine."""
    return ["inflate"]


def create_generator(name: str, settings: Settings) -> Generator:
    """Build the generator called `name`; raise GeneratorUnavailable with the reason when it cannot run."""
    if name == "inflate":
        return InflateGenerator()
    raise GeneratorUnavailable(f"unknown generator {name!r}; available: {', '.join(available_generators())}")
