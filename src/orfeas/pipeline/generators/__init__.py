"""Shape generators and the registry that builds them by name."""

from __future__ import annotations

import importlib

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

BUILT_IN = {"inflate": lambda settings: InflateGenerator()}


def available_generators(settings: Settings) -> list[str]:
    """Names of the generators this installation knows: the built-in ones and those named in settings."""
    return [*BUILT_IN, *settings.generators]


def create_generator(name: str, settings: Settings) -> Generator:
    """Build the generator called `name`; raise GeneratorUnavailable with the reason when it cannot run.

    Extra generators come from `settings.generators` ({"name": "module:factory"}), where `factory(settings)`
    returns the generator: how plug-ins and test generators reach a server started as a separate process.
    """
    if name in BUILT_IN:
        return BUILT_IN[name](settings)
    target = settings.generators.get(name)
    if target is None:
        known = ", ".join(available_generators(settings))
        raise GeneratorUnavailable(f"unknown generator {name!r}; available: {known}")
    module_name, _, attribute = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise GeneratorUnavailable(f"generator {name!r} ({target}) cannot be loaded: {exc}") from None
    return factory(settings)
