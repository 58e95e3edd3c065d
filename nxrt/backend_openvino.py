"""The OpenVINO backend: nxrt's augmented ONNX graphs run by the OpenVINO runtime on the CPU.

`OpenVINOSession` has the part of onnxruntime's InferenceSession that nxrt uses (`run`,
`get_inputs`, `get_outputs`), so the engine's session pool, batching, cache and memory budget
serve it unchanged. The graph is the same standard-ONNX file onnxruntime runs; OpenVINO reads it
itself (`Core.read_model`). The model is compiled once per batch size it is run at (static
shapes: OpenVINO's CPU plugin picks its kernels per shape; a run uses the chunk size and at most
one shorter remainder).

Precision (see README, "Backends"): inference precision f32 (the CPU's bf16 is never used),
subnormal floats flushed as onnxruntime's sessions flush them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import InputError, ModelError

#: the provider name nxrt uses for this backend (not an onnxruntime execution provider)
OPENVINO = "OpenVINO"


def available() -> bool:
    """Whether the openvino package is installed and its CPU plugin loads here."""
    try:
        import openvino as ov
    except ImportError:
        return False
    try:
        return "CPU" in ov.Core().available_devices
    except Exception:
        return False


def require() -> None:
    """One line saying how to get the backend when it is not there."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise InputError("provider 'openvino' needs OpenVINO, which is not installed; pip install "
                         "'nxrt[openvino]' (or use --provider cpu)") from None
    if not available():
        raise InputError("provider 'openvino': OpenVINO's CPU plugin does not load on this machine; "
                         "use --provider cpu")


@dataclass(frozen=True)
class _Port:
    """What nxrt reads of an input or output (the `.name` of onnxruntime's NodeArg)."""

    name: str
    shape: tuple


def compile_config(threads: int | None) -> dict:
    """OpenVINO CPU properties of an nxrt model: f32 arithmetic throughout (the CPU plugin would
    otherwise run bf16 on CPUs that have it), one stream of `threads` threads (latency), and
    subnormals flushed to zero (as nxrt's onnxruntime sessions: the gradients of confident models
    underflow, and x86 processes subnormals ~100x slower)."""
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "NUM_STREAMS": 1,
            "CPU_DENORMALS_OPTIMIZATION": True}


class OpenVINOSession:
    """An nxrt graph compiled by OpenVINO for the CPU, one compiled model per batch size."""

    device = None  # (the engine's IO binding is onnxruntime's: nothing to bind here)

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, threads: int | None = None):
        import openvino as ov

        self._core = ov.Core()
        try:
            if isinstance(model, onnx.ModelProto):
                from .graph import save_model

                with tempfile.TemporaryDirectory() as tmp:  # (OpenVINO reads ONNX from a file: any size)
                    path = save_model(model, Path(tmp) / "model.onnx", external=None)
                    self._model = self._core.read_model(str(path))
            else:
                self._model = self._core.read_model(str(model))
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot read the model: {str(exc).strip().splitlines()[0]}") from exc
        _unshare_constants(self._model)
        self._config = compile_config(threads)
        self._inputs = [_Port(p.get_any_name(), _dims(p.get_partial_shape())) for p in self._model.inputs]
        self._outputs = [_Port(p.get_any_name(), _dims(p.get_partial_shape())) for p in self._model.outputs]
        self._compiled: dict[tuple, object] = {}

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, output_names, feeds: dict, run_options=None) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        key = tuple(sorted((k, v.shape) for k, v in feeds.items()))  # (in practice: one per batch size)
        compiled = self._compiled.get(key) or self._compile(key, feeds)
        result = compiled.create_infer_request().infer(feeds)
        names = output_names or [o.name for o in self._outputs]
        return [np.array(result[compiled.output(n)], copy=True) for n in names]

    def _compile(self, key: tuple, feeds: dict):
        import openvino as ov

        model = self._model.clone()
        model.reshape({port: ov.PartialShape(list(feeds[port.get_any_name()].shape)) for port in model.inputs
                       if port.get_any_name() in feeds})
        try:
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise ModelError(f"OpenVINO cannot compile the model: {str(exc).strip().splitlines()[0]}") from exc
        self._compiled[key] = compiled
        return compiled


def _dims(shape) -> tuple:
    """A partial shape as onnxruntime reports one: ints, and None for a dynamic dim."""
    if shape.rank.is_dynamic:
        return ()
    return tuple(d.get_length() if d.is_static else None for d in shape)


def _unshare_constants(model) -> int:
    """Give every consumer of a shared constant its own copy; returns how many were made.

    An nxrt gradient graph feeds one weight tensor to the forward op and to its gradient op (a
    ConvTranspose's weights to the Conv that is its data gradient). OpenVINO 2026.4's CPU plugin
    gets that wrong when the ConvTranspose is square (as many input as output channels): it
    re-lays the shared weights out for one consumer and the other reads them so (measured: the
    gradient of a 4->4 ConvTranspose 34% off, a BasicUNet's 54%). Separate copies cost only the
    weights' memory once more."""
    from openvino import opset13 as ops

    copies = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        targets = list(op.output(0).get_target_inputs())
        for target in targets[1:]:
            target.replace_source_output(ops.constant(op.get_data(), shared_memory=False).output(0))
            copies += 1
    return copies
