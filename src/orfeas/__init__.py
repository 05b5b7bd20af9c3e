"""ORFEAS: turn an image into a 3D model.

from orfeas import generate
result = generate("chair.png")
result.mesh.export("chair.glb")
"""

from orfeas.config import Settings
from orfeas.options import GenerateOptions
from orfeas.pipeline.generate import GenerationResult, generate, generate_batch, save_result

__all__ = ["GenerateOptions", "GenerationResult", "Settings", "generate", "generate_batch", "save_result"]
__version__ = "0.1.0"
