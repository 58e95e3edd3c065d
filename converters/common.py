"""What the Keras and torch converters share: the missing-extra error, the card, verification, saving.

A conversion is: framework model -> ONNX ModelProto (framework-specific) -> `finish()`, which
writes the card, clamps the IR version, runs the ONNX model on onnxruntime (CPU) and the framework
model on the same random input, refuses a disagreeing export, and only then saves atomically.
Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nxrt.card import ModelCard
from nxrt.errors import InputError, ModelError

#: An export whose outputs differ from the framework's by more than this (relative L2) is refused.
TOLERANCE = 1e-4
#: Batch size of the verification input when the exported batch axis is dynamic.
VERIFY_BATCH = 2

EXTRAS = {"torch": "torch", "tensorflow": "keras", "keras": "keras", "tf2onnx": "keras", "onnxscript": "torch"}


def require(*modules: str) -> list[Any]:
    """Import framework modules, or raise InputError naming the pip extra that installs them."""
    out = []
    for name in modules:
        if name in ("tensorflow", "keras", "tf2onnx"):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            with native_stderr_quiet(name in ("tensorflow", "keras", "tf2onnx")):
                out.append(importlib.import_module(name))
        except ImportError as exc:
            extra = EXTRAS.get(name.split(".")[0], name)
            raise InputError(f"converting needs {name.split('.')[0]}, which is not installed ({exc}); "
                             f"install it with: pip install 'nxrt[{extra}]'") from None
    return out


@contextlib.contextmanager
def native_stderr_quiet(active: bool = True):
    """Send file descriptor 2 to a scratch file for the duration (C++ logging of TF, grappler).

    TensorFlow 2.21 logs oneDNN and grappler notices from C++ straight to fd 2, ignoring
    TF_CPP_MIN_LOG_LEVEL; a CLI error must stay one line. Python exceptions are unaffected.
    """
    if not active:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def check_output_path(out_path: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{out}: the output must be an .onnx file (e.g. -o model.onnx)")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite (Python: overwrite=True) to replace it")
    if out.is_dir():
        raise InputError(f"{out} is a folder; give an .onnx file name")
    return out


def make_card(*, task: str, layout: str, channels, labels=None, normalize=None, spatial_shape=None) -> ModelCard:
    """A validated ModelCard; option values may be lists or comma-separated strings."""
    card = ModelCard()
    values = {"task": task, "layout": layout, "channels": channels, "labels": labels, "normalize": normalize,
              "spatial_shape": spatial_shape}
    if not task:
        raise InputError("task is required: classification or segmentation (CLI: --task)")
    if not channels:
        raise InputError("channels are required: the input channel names in order, e.g. flair,t1,t1ce,t2 "
                         "(CLI: --channels)")
    for key, value in values.items():
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        try:
            card.set(key, text)
        except ModelError as exc:
            raise InputError(str(exc)) from None
    return card


def check_card(card: ModelCard, sample_shape: Sequence, output_shape: Sequence | None) -> None:
    """Channels must match the input's channel axis, labels the output's class/channel axis.

    sample_shape: one sample's input shape (no batch axis), output_shape: the output with batch
    axis; dims may be None (unknown).
    """
    first = card.layout == "channels_first"
    n_in = sample_shape[0] if first else sample_shape[-1]
    if isinstance(n_in, int) and n_in != len(card.channels):
        raise InputError(f"--channels names {len(card.channels)} channel(s) ({','.join(card.channels)}) but the "
                         f"model's input has {n_in}; give one name per input channel, in order")
    if card.labels and output_shape is not None and len(output_shape) >= 2:
        axis = 1 if (card.task == "classification" or first) else len(output_shape) - 1
        n_out = output_shape[axis]
        if isinstance(n_out, int) and n_out != len(card.labels):
            raise InputError(f"--labels names {len(card.labels)} label(s) but the model's output has {n_out} "
                             f"{'classes' if card.task == 'classification' else 'channels'}; give one per output")
    spatial = list(sample_shape[1:] if first else sample_shape[:-1])
    if card.spatial_shape is not None:
        if len(card.spatial_shape) != len(spatial):
            raise InputError(f"--spatial-shape {','.join(map(str, card.spatial_shape))} has {len(card.spatial_shape)} "
                             f"axes but the model's input has {len(spatial)} spatial axes")
        fixed = [(a, b) for a, b in zip(card.spatial_shape, spatial, strict=True) if isinstance(b, int)]
        if any(a != b for a, b in fixed):
            raise InputError(f"--spatial-shape {','.join(map(str, card.spatial_shape))} differs from the model's "
                             f"input spatial shape {_fmt(spatial)}; leave it out (the input shape is used)")
    elif all(isinstance(d, int) for d in spatial):
        card.spatial_shape = [int(d) for d in spatial]


def _fmt(dims) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else "N" if d is None else str(d) for d in dims) + "]"


def io_shapes(model: onnx.ModelProto) -> tuple[dict, dict]:
    """{name: [dims]} for the graph inputs (no initializers) and outputs; unknown dims are strings or None."""
    from nxrt.graph import dims_of, infer_shapes

    try:
        inferred = infer_shapes(model)
    except ModelError:
        inferred = model
    inits = {t.name for t in model.graph.initializer}
    ins = {v.name: list(dims_of(v) or ()) for v in inferred.graph.input if v.name not in inits}
    outs = {v.name: list(dims_of(v) or ()) for v in inferred.graph.output}
    return ins, outs


def random_input(shape: Sequence, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def verification_input(model: onnx.ModelProto, sample_shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Random float32 input: batch VERIFY_BATCH when the ONNX batch axis is dynamic, else its static size."""
    ins, _ = io_shapes(model)
    first = next(iter(ins.values()), [None])
    batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else VERIFY_BATCH
    return random_input((batch, *sample_shape), seed)


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    from nxrt.engine import make_session

    sess = make_session(model, "cpu")
    feeds = {sess.get_inputs()[0].name: x}
    try:
        return sess.run(None, feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the exported model on input {list(x.shape)}: "
                         f"{str(exc).splitlines()[0]}") from exc


def verify(model: onnx.ModelProto, reference: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray, *,
           framework: str, tolerance: float = TOLERANCE) -> dict:
    """Run the ONNX model and `reference` (the framework model) on x and compare every output.

    Returns {"max_abs_error", "rel_error"}: the largest absolute difference, and the relative L2
    error ||onnx - ref|| / ||ref|| over all outputs together. Raises ModelError when rel_error >
    tolerance (or when the outputs do not correspond), so a wrong export is never written.
    """
    got = run_onnx(model, x)
    ref = [np.asarray(r) for r in reference(x)]
    if len(got) != len(ref):
        raise ModelError(f"the exported ONNX model has {len(got)} output(s) but the {framework} model returns "
                         f"{len(ref)}; nothing was written")
    max_abs, num, den = 0.0, 0.0, 0.0
    for k, (a, b) in enumerate(zip(got, ref, strict=True)):
        if a.shape != b.shape:
            raise ModelError(f"output {k}: the ONNX model gives shape {list(a.shape)} but the {framework} model "
                             f"{list(b.shape)}; nothing was written")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
            raise ModelError(f"output {k} is not finite (NaN/Inf) on a random normal input; check the model; "
                             "nothing was written")
        d = a64 - b64
        max_abs = max(max_abs, float(np.abs(d).max(initial=0.0)))
        num += float((d * d).sum())
        den += float((b64 * b64).sum())
    rel = float(np.sqrt(num) / max(np.sqrt(den), 1e-30))
    if not rel <= tolerance:
        raise ModelError(f"the exported ONNX model disagrees with the {framework} model on a random input: "
                         f"relative error {rel:.2e} > {tolerance:.0e} (max abs {max_abs:.2e}); nothing was written. "
                         "Try the other exporter or opset, and report the model if it persists")
    return {"max_abs_error": max_abs, "rel_error": rel}


def finish(model: onnx.ModelProto, out_path: Path, card: ModelCard, reference, x: np.ndarray, *,
           framework: str, overwrite: bool, extra: dict | None = None) -> dict:
    """Card + IR clamp + verification, then the atomic save. Returns the converter's result dict."""
    from nxrt.graph import finish_model, save_model

    card.write(model)
    finish_model(model)
    report = verify(model, reference, x, framework=framework)
    if out_path.exists() and not overwrite:  # it may have appeared while converting
        raise InputError(f"{out_path} exists; pass --overwrite (Python: overwrite=True) to replace it")
    save_model(model, out_path)
    ins, outs = io_shapes(model)
    result = {"path": str(out_path), **report, "verify_shape": list(x.shape), "inputs": ins, "outputs": outs,
              "card": card, "opset": _opset(model), "ir_version": int(model.ir_version)}
    result.update(extra or {})
    return result


def _opset(model: onnx.ModelProto) -> int:
    from nxrt.graph import opset_of

    return opset_of(model)


def parse_shape(text: str | Sequence[int] | None, what: str) -> list[int] | None:
    """'4,128,128,128' / '4x128x128' / a sequence -> list of positive ints (InputError otherwise)."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise InputError(f"{what} '{text}' is not a list of integers like 4,128,128,128") from None
    else:
        dims = [int(d) for d in text]
    if not dims or min(dims) <= 0:
        raise InputError(f"{what} '{text}' must be positive integers like 4,128,128,128")
    return dims
