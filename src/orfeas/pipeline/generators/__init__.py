"""Shape generators and the registry that builds them by name."""

from __future__ import annotations

import importlib

from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.generators.base import GenerationParams, Generator, GridField, Shape
from orfeas.pipeline.generators.inflate import InflateGenerator
from orfeas.pipeline.settings import PipelineSettings

__all__ = [
    "GenerationParams",
    "Generator",
    "GeneratorCache",
    "GridField",
    "Shape",
    "available_generators",
    "create_generator",
    "is_available",
]

BUILT_IN = {"inflate": lambda settings: InflateGenerator()}
# Generators of optional extras, by module: each has missing_modules() (listed when it returns nothing) and
# build(settings), which raises GeneratorUnavailable with the install command; neither imports the heavy packages.
OPTIONAL = {"hunyuan3d": "orfeas.pipeline.generators.hunyuan"}


def available_generators(settings: PipelineSettings) -> list[str]:
    """Names of the generators this installation can build: the built-in ones, the optional ones whose packages
    are installed, and those named in settings."""
    optional = [name for name, module in OPTIONAL.items() if not importlib.import_module(module).missing_modules()]
    return [*BUILT_IN, *optional, *settings.generators]


def is_available(name: str, settings: PipelineSettings) -> bool:
    """Whether `name` is among `available_generators(settings)`, asking only its own extra whether it is installed
    (a check made on every submission; looking for an extra's packages searches the import path)."""
    if name in BUILT_IN or name in settings.generators:
        return True
    return name in OPTIONAL and not importlib.import_module(OPTIONAL[name]).missing_modules()


def create_generator(name: str, settings: PipelineSettings) -> Generator:
    """Build the generator called `name`; raise GeneratorUnavailable with the reason when it cannot run.

    Extra generators come from `settings.generators` ({"name": "module:factory"}), where `factory(settings)`
    returns the generator: how plug-ins and test generators reach a server started as a separate process.
    """
    if name in BUILT_IN:
        return BUILT_IN[name](settings)
    if name in OPTIONAL:
        return importlib.import_module(OPTIONAL[name]).build(settings)
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


class GeneratorCache:
    """Generators by name, each built on first use and kept (building is cheap; a model's weights load on its first
    generation and stay loaded as long as the cache holds it)."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self._built: dict[str, Generator] = {}

    def get(self, name: str) -> Generator:
        """The generator called `name`; GeneratorUnavailable as `create_generator` raises it."""
        if name not in self._built:
            self._built[name] = create_generator(name, self.settings)
        return self._built[name]

    def __setitem__(self, name: str, generator: Generator) -> None:
        """Keep an already built (or loaded) generator under `name`."""
        self._built[name] = generator
