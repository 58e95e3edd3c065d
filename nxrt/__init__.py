"""nxrt: framework-free explanations of ONNX models (gradients computed by the graph itself)."""

from .card import ModelCard
from .errors import InputError, ModelError, NxrtError
from .passes import ScoreSpec, augment

__version__ = "0.1.0"
__all__ = ["InputError", "ModelCard", "ModelError", "NxrtError", "ScoreSpec", "augment"]
