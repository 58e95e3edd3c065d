"""PyTorch -> ONNX through torch.onnx (dynamo exporter by default, legacy TorchScript exporter on request).

Sources: an `nn.Module` (Python API), or a file in a format that does not unpickle arbitrary Python
objects: a `torch.export` program (`.pt2`, written by `torch.export.save`) or a TorchScript archive
(`torch.jit.script/trace(...).save`). A pickled checkpoint (`torch.save(model)`, a state_dict, most
`.pt`/`.pth` files) is refused: loading it runs whatever code the pickle names. The file format is
decided from the archive's contents, never from its extension.

The ONNX input is named "input", channels first, with a dynamic batch axis unless
dynamic_batch=False (a `.pt2` program keeps the batch axis it was exported with). TorchScript can
only go through the legacy exporter, a `.pt2` program only through the dynamo exporter.
torch is imported only inside the functions (extra `nxrt[torch]`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nxrt.errors import InputError, ModelError

from .common import check_card, check_output_path, finish, make_card, parse_shape, random_input, require

FRAMEWORK = "PyTorch"
PICKLE_HELP = ("a pickled checkpoint can run arbitrary code when loaded, so nxrt does not load it; give a "
               "torch.export program (torch.export.save(torch.export.export(model, (x,)), 'model.pt2')) or "
               "TorchScript (torch.jit.script(model).save('model.ts')), or call "
               "nxrt.converters.convert_torch(model, ...) on the nn.Module in Python")


def detect_format(path: Path) -> str:
    """'pt2' or 'torchscript' from the archive's entries; InputError for pickles and anything else."""
    if not path.exists():
        raise InputError(f"{path}: no such file; give a .pt2 (torch.export) or TorchScript file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a .pt2 (torch.export) or TorchScript file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a torch.export (.pt2) or TorchScript archive (looks like a legacy "
                         f"pickle); {PICKLE_HELP}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: unreadable archive ({exc}); re-save the model") from None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "pt2"
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        raise InputError(f"{path}: a pickled PyTorch checkpoint (torch.save); {PICKLE_HELP}")
    raise InputError(f"{path}: not a torch.export (.pt2) or TorchScript archive; {PICKLE_HELP}")


def convert_torch(src: Any, out_path: str | os.PathLike, *, task: str, channels, example_shape=None,
                  example_input=None, labels=None, normalize=None, spatial_shape=None, dynamo: bool = True,
                  opset: int | None = None, dynamic_batch: bool = True, overwrite: bool = False) -> dict:
    """Convert a PyTorch model to `out_path` (.onnx) with its nxrt model card (layout channels_first).

    src: an nn.Module, a `.pt2` torch.export program or a TorchScript file (pickles are refused).
    example_shape: one sample's input shape without the batch axis, e.g. (4, 128, 128, 128);
    example_input: an example batch (array or tensor) instead. Neither is needed for a `.pt2`
    program (it records its input shape), and without both the shape is (len(channels),
    *spatial_shape). dynamo: the torch.export-based exporter (opset 18 by default); False: the
    legacy TorchScript exporter (opset 17). dynamic_batch: export the batch axis as dynamic.
    The module is exported in eval mode (its training flag is restored afterwards).

    Returns {"path", "max_abs_error", "rel_error", "inputs", "outputs", "card", "exporter", ...}:
    the ONNX model (onnxruntime, CPU) against torch on one random input (batch 2 when the batch
    axis is dynamic); a relative error above 1e-4 raises ModelError and nothing is written.
    """
    out = check_output_path(out_path, overwrite)
    card = make_card(task=task, layout="channels_first", channels=channels, labels=labels, normalize=normalize,
                     spatial_shape=spatial_shape)
    kind = "module"
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        kind = detect_format(path)
        source = str(path)
    (torch,) = require("torch")
    if kind == "module":
        if not isinstance(src, torch.nn.Module):
            raise InputError(f"cannot convert a {type(src).__name__}: give an nn.Module, a .pt2 torch.export "
                             "program or a TorchScript file")
        model, source = src, f"nn.Module {type(src).__name__}"
    elif kind == "pt2":
        if not dynamo:
            raise InputError(f"{path}: a torch.export program goes through the dynamo exporter only; "
                             "leave out --legacy")
        model = _load(torch.export.load, path, "torch.export program")
    else:
        dynamo = False  # the dynamo exporter cannot trace TorchScript; the legacy one is made for it
        model = _load(lambda p: torch.jit.load(p, map_location="cpu"), path, "TorchScript archive")
    if dynamo:
        try:
            require("onnxscript")
        except InputError:
            raise InputError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript "
                             "(or use the legacy exporter: --legacy, Python: dynamo=False)") from None
    opset = opset or (18 if dynamo else 17)

    sample, x_export = _example(torch, model, kind, card, example_shape, example_input, dynamic_batch, source)
    call = model.module() if kind == "pt2" else model
    restore = getattr(model, "training", False) if kind == "module" else False
    if kind == "module":
        model.eval()
    try:
        with torch.no_grad():
            try:
                y = _leaves(call(x_export))
            except Exception as exc:
                raise InputError(f"{source}: the model fails on an input of shape {list(x_export.shape)} "
                                 f"({type(exc).__name__}: {_first_line(exc)}); check --input-shape") from None
        check_card(card, sample, tuple(y[0].shape))
        names = ["output"] if len(y) == 1 else [f"output_{k}" for k in range(len(y))]
        proto = _export(torch, model, kind, x_export, names, dynamo, opset, dynamic_batch, source)

        def reference(x: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                return [t.detach().cpu().numpy() for t in _leaves(call(torch.from_numpy(x)))]

        from .common import verification_input

        x = verification_input(proto, sample)
        exporter = "dynamo" if dynamo else "legacy (TorchScript)"
        return finish(proto, out, card, reference, x, framework=FRAMEWORK, overwrite=overwrite,
                      extra={"source": source, "exporter": exporter})
    finally:
        if kind == "module" and restore:
            model.train(True)


def _load(loader, path: Path, what: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loader(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot load the {what} ({type(exc).__name__}: {_first_line(exc)}); "
                         "re-save it with this torch version") from None


def _example(torch, model, kind, card, example_shape, example_input, dynamic_batch, source):
    """(one sample's shape, export input tensor). Batch 2 when dynamic: torch.export specialises 1."""
    batch = 2 if dynamic_batch else 1
    if example_input is not None:
        x = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
        if x.dim() < 2:
            raise InputError(f"example_input of shape {list(x.shape)} needs a batch and a channel axis")
        sample = list(x.shape[1:])
        if dynamic_batch and x.shape[0] < 2:
            x = x.repeat(2, *([1] * (x.dim() - 1)))
        return sample, x
    shape = parse_shape(example_shape, "--input-shape")
    if kind == "pt2":
        placeholders = [n for n in model.graph.nodes if n.op == "placeholder" and "val" in n.meta]
        user = set(model.graph_signature.user_inputs)
        vals = [n.meta["val"] for n in placeholders if n.name in user]
        if len(vals) != 1:
            raise InputError(f"{source}: the program has {len(vals)} inputs; nxrt explains single-input models")
        dims = list(vals[0].shape)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise InputError(f"{source}: the program's input has dynamic spatial axes {dims}; export it with "
                             "a fixed channel count and spatial size")
        recorded = [int(d) for d in dims[1:]]
        if shape is not None and shape != recorded:
            raise InputError(f"--input-shape {','.join(map(str, shape))} differs from the program's input "
                             f"{','.join(map(str, recorded))}; leave --input-shape out")
        batch = dims[0] if isinstance(dims[0], int) else 2
        return recorded, torch.randn(batch, *recorded)
    if shape is None:
        if card.spatial_shape is None:
            what = "--input-shape C,D,H,W (Python: example_shape=...)"
            raise InputError(f"{source}: the input shape is unknown; give {what} or --spatial-shape")
        shape = [len(card.channels), *card.spatial_shape]
    if len(shape) < 2:
        raise InputError(f"--input-shape {','.join(map(str, shape))}: give channels and spatial sizes, "
                         "e.g. 4,128,128,128 (no batch axis)")
    return shape, torch.from_numpy(random_input((batch, *shape)))


def _export(torch, model, kind, x, names, dynamo, opset, dynamic_batch, source):
    import onnx

    kw = {"input_names": ["input"], "output_names": names, "opset_version": opset}
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                if dynamic_batch and kind == "module":
                    kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
                prog = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False, **kw)
                return prog.model_proto
            if dynamic_batch:
                kw["dynamic_axes"] = {n: {0: "N"} for n in ["input", *names]}
            buf = io.BytesIO()
            torch.onnx.export(model, (x,), buf, dynamo=False, **kw)
            return onnx.load_from_string(buf.getvalue())
    except InputError:
        raise
    except Exception as exc:
        other = "the legacy exporter (--legacy, Python: dynamo=False)" if dynamo else \
            "the dynamo exporter (leave out --legacy)"
        if kind != "module":
            other = "a different opset"
        raise ModelError(f"{source}: torch.onnx.export failed ({type(exc).__name__}: {_first_line(exc)}); "
                         f"try {other}") from exc
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _leaves(y) -> list:
    if isinstance(y, dict):
        return [t for v in y.values() for t in _leaves(v)]
    if isinstance(y, list | tuple):
        return [t for v in y for t in _leaves(v)]
    return [y]


def _first_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).splitlines() if s.strip()]
    return lines[0][:300] if lines else type(exc).__name__
