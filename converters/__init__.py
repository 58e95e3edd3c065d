"""Converters from Keras and PyTorch to ONNX with the nxrt model card (installed as `nxrt.converters`).

The only code in nxrt that imports a deep-learning framework, and only inside the conversion
functions: `import nxrt.converters` works without torch or tensorflow, and calling a converter
without its framework raises nxrt.InputError naming the extra to install (`nxrt[keras]`,
`nxrt[torch]`). Every conversion is verified (ONNX on onnxruntime vs the framework, one random
input, relative error <= 1e-4) before anything is written.
"""

from __future__ import annotations

from .keras import convert_keras
from .torch import convert_torch, detect_format

__all__ = ["convert_keras", "convert_torch", "detect_format"]
