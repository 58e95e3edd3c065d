"""Keras -> ONNX through tf2onnx, with the nxrt card written and the export verified.

Sources: an in-memory `keras.Model`, a `.keras` file (loaded in Keras' safe mode unless
unsafe=True: a Lambda layer is Python code that would run at load time), or a TensorFlow
SavedModel folder (e.g. from `model.export(...)`; its `serving_default` signature is converted).
The ONNX input is named "input", keeps the Keras channels-last layout and has a dynamic batch axis.
tensorflow, keras and tf2onnx are imported only inside the functions (extra `nxrt[keras]`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from nxrt.errors import InputError, ModelError

from .common import check_card, check_output_path, finish, make_card, native_stderr_quiet, random_input

FRAMEWORK = "Keras"


def convert_keras(src: Any, out_path: str | os.PathLike, *, task: str, channels, labels=None, normalize=None,
                  spatial_shape=None, opset: int = 17, unsafe: bool = False, overwrite: bool = False) -> dict:
    """Convert a Keras model to `out_path` (.onnx) with its nxrt model card.

    src: a keras.Model, a `.keras` file or a SavedModel folder. task: classification or
    segmentation. channels: input channel names in order (list or "flair,t1,t1ce,t2"). labels,
    normalize (zscore|minmax|none), spatial_shape: optional card fields; spatial_shape defaults to
    the model's input spatial size and is required when that size is not fixed. unsafe: allow
    `.keras` files whose Lambda layers run Python code when loaded (only for files you trust).
    overwrite: replace an existing out_path.

    Returns {"path", "max_abs_error", "rel_error", "inputs", "outputs", "card", ...}: the errors
    are those of the ONNX model (onnxruntime, CPU) against Keras on one random input (batch 2);
    a relative error above 1e-4 raises ModelError and nothing is written.
    """
    out = check_output_path(out_path, overwrite)
    card = make_card(task=task, layout="channels_last", channels=channels, labels=labels, normalize=normalize,
                     spatial_shape=spatial_shape)
    from .common import require

    tf, keras, tf2onnx = require("tensorflow", "keras", "tf2onnx")
    _quiet(tf, tf2onnx)
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder; give a .keras file or a SavedModel folder")
        if path.is_dir():
            return _convert_saved_model(tf, tf2onnx, path, out, card, opset, overwrite)
        if path.suffix.lower() != ".keras":
            raise InputError(f"{path}: not a .keras file or SavedModel folder; save the model with "
                             "model.save('model.keras') or model.export('saved_model_dir')")
        model = _load_keras(keras, path, unsafe)
        source = str(path)
    elif isinstance(src, keras.Model):
        model, source = src, f"keras.Model {src.name!r}"
    else:
        raise InputError(f"cannot convert a {type(src).__name__}: give a keras.Model, a .keras file or a "
                         "SavedModel folder")
    if len(model.inputs) != 1:
        raise InputError(f"{source}: the model has {len(model.inputs)} inputs; nxrt explains single-input models "
                         "(stack the modalities as channels of one input)")
    sample = _sample_shape(tuple(model.inputs[0].shape)[1:], card, source)
    check_card(card, sample, tuple(model.outputs[0].shape))
    spec = (tf.TensorSpec((None, *tuple(model.inputs[0].shape)[1:]), tf.float32, name="input"),)
    proto = _tf2onnx(tf2onnx.convert.from_keras, model, spec, opset, f"{source}: tf2onnx cannot convert the model")

    def reference(x: np.ndarray) -> list[np.ndarray]:
        y = model(tf.constant(x), training=False)
        return [t.numpy() if hasattr(t, "numpy") else np.asarray(t) for t in tf.nest.flatten(y)]

    x = random_input((2, *sample))
    return finish(proto, out, card, reference, x, framework=FRAMEWORK, overwrite=overwrite,
                  extra={"source": source, "exporter": f"tf2onnx {tf2onnx.__version__}"})


def _load_keras(keras, path: Path, unsafe: bool):
    try:
        with native_stderr_quiet():
            return keras.saving.load_model(str(path), safe_mode=not unsafe, compile=False)
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            first = text.split(". ")[0].replace("`", "")
            raise InputError(f"{path}: Keras safe mode refuses to load it ({first}: Python code that would run "
                             "when loading); if you trust the file, convert it with --unsafe "
                             "(Python: unsafe=True)") from None
        raise InputError(f"{path}: Keras cannot load it ({type(exc).__name__}: {_first_line(exc)}); "
                         "check it is a .keras file saved by Keras 3 and that custom layers are importable") from None


def _sample_shape(dims: tuple, card, source: str) -> list[int]:
    """One sample's input shape (channels last); unknown spatial dims come from card.spatial_shape."""
    dims = list(dims)
    if dims and dims[-1] is None:
        raise InputError(f"{source}: the model's input has no fixed channel count; build it with "
                         "keras.Input((..., channels))")
    if any(d is None for d in dims[:-1]):
        if card.spatial_shape is None or len(card.spatial_shape) != len(dims) - 1:
            raise InputError(f"{source}: the model's input spatial size is not fixed ({dims}); give "
                             f"--spatial-shape with {len(dims) - 1} sizes (Python: spatial_shape=...)")
        dims = [s if d is None else d for d, s in zip(dims[:-1], card.spatial_shape, strict=True)] + dims[-1:]
    return [int(d) for d in dims]


def _convert_saved_model(tf, tf2onnx, path: Path, out: Path, card, opset: int, overwrite: bool) -> dict:
    if not (path / "saved_model.pb").exists():
        raise InputError(f"{path}: a folder without saved_model.pb is not a SavedModel; give a .keras file or "
                         "the folder written by model.export(...)")
    try:
        with native_stderr_quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise InputError(f"{path}: TensorFlow cannot load the SavedModel ({type(exc).__name__}: "
                         f"{_first_line(exc)})") from None
    sigs = dict(loaded.signatures)
    if not sigs:
        raise InputError(f"{path}: the SavedModel has no signatures; export it with model.export(...)")
    sig = sigs.get("serving_default") or next(iter(sigs.values()))
    args, kwargs = sig.structured_input_signature
    specs = list(args) + list(kwargs.items())
    if len(specs) != 1:
        raise InputError(f"{path}: the SavedModel signature has {len(specs)} inputs; nxrt explains "
                         "single-input models")
    arg, in_spec = next(iter(kwargs.items())) if kwargs else (None, args[0])
    outputs = sig.structured_outputs
    keys = sorted(outputs) if isinstance(outputs, dict) else None
    dims = tuple(in_spec.shape)

    def call(x):
        y = sig(**{arg: x}) if arg is not None else sig(x)
        return [y[k] for k in keys] if keys is not None else tf.nest.flatten(y)

    spec = (tf.TensorSpec((None, *dims[1:]), tf.float32, name="input"),)
    fn = tf.function(call, input_signature=spec)
    sample = _sample_shape(dims[1:], card, str(path))
    out_shape = tuple(tf.nest.flatten(outputs)[0].shape)
    check_card(card, sample, out_shape)
    proto = _tf2onnx(tf2onnx.convert.from_function, fn, spec, opset, f"{path}: tf2onnx cannot convert the SavedModel")

    def reference(x: np.ndarray) -> list[np.ndarray]:
        return [t.numpy() for t in fn(tf.constant(x))]

    x = random_input((2, *sample))
    return finish(proto, out, card, reference, x, framework="TensorFlow SavedModel", overwrite=overwrite,
                  extra={"source": str(path), "exporter": f"tf2onnx {tf2onnx.__version__}"})


def _quiet(tf, tf2onnx) -> None:
    """Keep TF/tf2onnx info chatter off stderr (CLI errors must stay one line)."""
    try:
        tf.get_logger().setLevel(logging.ERROR)
        tf2onnx.logging.set_level(logging.ERROR)
    except Exception:  # pragma: no cover - logging setup is best effort
        pass


def _tf2onnx(convert, source, spec, opset: int, failure: str):
    """Run a tf2onnx entry point quietly; its failures become one ModelError line."""
    try:
        with native_stderr_quiet():
            proto, _ = convert(source, input_signature=spec, opset=opset)
    except Exception as exc:
        raise ModelError(f"{failure} ({type(exc).__name__}: {_first_line(exc)})") from exc
    return proto


def _first_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).splitlines() if s.strip()]
    return lines[0][:300] if lines else type(exc).__name__
