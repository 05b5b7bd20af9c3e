"""ORFEAS: turn an image into a 3D model.

    from orfeas import generate
    result = generate("chair.png")
    result.mesh.export("chair.glb")

Names are imported on first use, so `orfeas.client` (the SDK) does not load the pipeline's numerical stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "GenerateOptions": "orfeas.pipeline.options",
    "GenerationResult": "orfeas.pipeline.generate",
    "PipelineSettings": "orfeas.pipeline.settings",
    "Settings": "orfeas.config",
    "generate": "orfeas.pipeline.generate",
    "generate_batch": "orfeas.pipeline.generate",
    "save_result": "orfeas.pipeline.generate",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'orfeas' has no attribute {name!r}")
