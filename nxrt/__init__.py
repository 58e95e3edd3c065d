"""nxrt: framework-free explanations of ONNX models (gradients computed by the graph itself).

The public names load on first use (PEP 562): `import nxrt.cli` then costs no onnx/onnxruntime
import, so `nxrt explain` starts reading the case while those are still being imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from .card import ModelCard
    from .context import Context
    from .errors import InputError, ModelError, NxrtError, NxrtWarning
    from .explainer import Explainer, Model, load
    from .explanation import Explanation
    from .layout import Layout
    from .params import Param
    from .passes import ScoreSpec, augment
    from .registry import Method, MethodResult, methods

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Context": ".context", "Explainer": ".explainer", "Model": ".explainer", "load": ".explainer",
    "Explanation": ".explanation", "Layout": ".layout", "Param": ".params",
    "InputError": ".errors", "ModelError": ".errors", "NxrtError": ".errors", "NxrtWarning": ".errors",
    "Method": ".registry", "MethodResult": ".registry", "methods": ".registry",
    "ModelCard": ".card",
    "ScoreSpec": ".passes", "augment": ".passes",
}
__all__ = ["Context", "Explainer", "Explanation", "InputError", "Layout", "Method", "MethodResult", "Model",
           "ModelCard", "ModelError", "NxrtError", "NxrtWarning", "Param", "ScoreSpec", "augment", "load",
           "methods"]  # = sorted(_EXPORTS) (a literal, for linters)


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
