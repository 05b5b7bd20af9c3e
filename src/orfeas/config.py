"""The one Settings object: read from ORFEAS_* environment variables, built once and passed down."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Machine- and deployment-level configuration (per-request choices live in `GenerateOptions`)."""

    model_config = SettingsConfigDict(env_prefix="ORFEAS_", extra="ignore")

    max_image_pixels: int = Field(
        40_000_000, description="Refuse images with more pixels than this (decompression-bomb guard)."
    )
    image_size: int = Field(512, description="Side of the square cut-out handed to generators, in pixels.")
    crop_margin: float = Field(0.05, description="Margin around the object in the cut-out, as a fraction.")
