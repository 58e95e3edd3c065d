"""nxrt: framework-free explanations of ONNX models (gradients computed by the graph itself).

The public names load on first use (PEP 562): `import nxrt.cli` then costs no onnx/onnxruntime
import, so `nxrt explain` starts reading the case while those are still being imported.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Context": ".explainer", "Explainer": ".explainer", "Model": ".explainer", "load": ".explainer",
    "InputError": ".errors", "ModelError": ".errors", "NxrtError": ".errors",
    "Method": ".registry", "methods": ".registry",
    "ModelCard": ".card",
    "ScoreSpec": ".passes", "augment": ".passes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nxrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
