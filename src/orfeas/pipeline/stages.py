"""The pipeline's stages by name: one vocabulary for timing (`Profile`), progress and monitoring advice.

A `Stage` is a `str`, so stored profiles, progress rows and JSON carry the plain names ("shape_generation").
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A step of image → mesh, in the order it runs; each is timed in the job's profile."""

    IMAGE_LOADING = "image_loading"
    BACKGROUND_REMOVAL = "background_removal"
    SHAPE_GENERATION = "shape_generation"
    MESH_EXTRACTION = "mesh_extraction"
    MESH_CLEANUP = "mesh_cleanup"
    TEXTURING = "texturing"
    EXPORT = "export"
