"""nxrt: framework-free explanations of ONNX models (gradients computed by the graph itself).

The public names load on first use (PEP 562): `import nxrt.cli` then costs no onnx/onnxruntime
import, so `nxrt explain` starts reading the case while those are still being imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from .card import ModelCard
    from .errors import InputError, ModelError, NxrtError
    from .explainer import Context, Explainer, Model, load
    from .passes import ScoreSpec, augment
    from .registry import Method, methods

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Context": ".explainer", "Explainer": ".explainer", "Model": ".explainer", "load": ".explainer",
    "InputError": ".errors", "ModelError": ".errors", "NxrtError": ".errors",
    "Method": ".registry", "methods": ".registry",
    "ModelCard": ".card",
    "ScoreSpec": ".passes", "augment": ".passes",
}
__all__ = ["Context", "Explainer", "InputError", "Method", "Model", "ModelCard", "ModelError", "NxrtError",
           "ScoreSpec", "augment", "load", "methods"]  # = sorted(_EXPORTS) (a literal, for linters)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule (nxrt.postprocess, nxrt.passes, ...), as an eager `import nxrt` gave them
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'nxrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
