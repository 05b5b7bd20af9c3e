"""What the user asked for: per-request generation options and output formats, the pipeline's own input.

Validated once at the edge (CLI, API) and passed down to the pipeline and the service.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orfeas.errors import InvalidOptions
from orfeas.limits import check_json_value

MAX_GENERATOR_OPTIONS_BYTES = 16 * 1024
FORMATS = ("glb", "obj", "stl", "ply")


class GenerateOptions(BaseModel):
    """What the user asked for: generator, grid resolution, face budget, texture and output formats."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field("inflate", max_length=64)
    resolution: int | None = Field(
        None, ge=32, le=1024, description="Grid cells across the cut-out; None takes the generator's default."
    )
    faces: int = Field(50_000, ge=1_000, le=5_000_000, description="Face budget after decimation.")
    texture: bool = Field(True, description="Base-colour texture with UVs; off gives vertex colours.")
    formats: tuple[str, ...] = ("glb",)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    generator_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("generator_options")
    @classmethod
    def _check_generator_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value, "generator_options")
        if len(json.dumps(value)) > MAX_GENERATOR_OPTIONS_BYTES:
            raise ValueError(f"longer than {MAX_GENERATOR_OPTIONS_BYTES} bytes as JSON")
        return value

    @field_validator("formats", mode="before")
    @classmethod
    def _check_formats(cls, value: Any) -> tuple[str, ...]:
        return parse_formats(value)

    @classmethod
    def build(cls, **values: Any) -> GenerateOptions:
        """Validate `values`, raising InvalidOptions with every problem in one message."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidOptions(problems) from None


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """Parse "glb,obj" (or a list of such items) into validated, lowercase, de-duplicated format names."""
    items = [text] if isinstance(text, str) else list(text)
    formats: list[str] = []
    for item in items:
        for part in item.split(","):
            name = part.strip().lower()
            if name and name not in formats:
                formats.append(check_format(name))
    if not formats:
        raise InvalidOptions(f"no export format given; choose from {', '.join(FORMATS)}")
    return tuple(formats)


def check_format(fmt: str) -> str:
    """Return the format name in lowercase, or raise InvalidOptions naming the accepted ones."""
    name = fmt.strip().lower()
    if name not in FORMATS:
        raise InvalidOptions(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return name
