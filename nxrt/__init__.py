"""nxrt: framework-free explanations of ONNX models (gradients computed by the graph itself)."""

from .card import ModelCard
from .errors import InputError, ModelError, NxrtError
from .explainer import Context, Explainer, Model, load
from .passes import ScoreSpec, augment
from .registry import Method, methods

__version__ = "0.1.0"
__all__ = ["Context", "Explainer", "InputError", "Method", "Model", "ModelCard", "ModelError", "NxrtError",
           "ScoreSpec", "augment", "load", "methods"]
