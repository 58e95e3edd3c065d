"""TensorFlow graphs -> ONNX through tf2onnx: TF1 frozen graphs (.pb) and SavedModel folders.

A frozen graph often still carries its training switches: `PlaceholderWithDefault` flags such as
`training` / `is_training` / `phase_train` defaulting to True, or a dropout `keep_prob` defaulting
below 1. Converted as they are, dropout stays on (random ops in the ONNX model: two explanations
of one input differ). Each such flag is set to its inference value (False, or 1.0 for a keep
probability) before conversion, and the choice is reported; `flags={name: value}` (CLI `--flag
NAME=VALUE`) sets any placeholder-with-default explicitly. The input is the graph's only float
Placeholder unless `input_node` names it; the outputs are the nodes nothing else reads unless
`output_nodes` names them. The export is verified against TensorFlow running the same (flag-set)
graph, like the other converters. A SavedModel folder is converted as `nxrt convert keras` does.
tensorflow and tf2onnx are imported only inside the functions (extra `nxrt[keras]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nxrt.errors import InputError, ModelError
from nxrt.ops import random_nodes

from .common import check_card, check_output_path, finish, make_card, native_stderr_quiet, random_input

#: placeholder-with-default names that switch training behaviour, and their inference values
TRAINING_FLAG = re.compile(r"(^|[/_])(is_)?(train|training|phase_train|phase|is_training|training_mode)$", re.I)
KEEP_PROB = re.compile(r"(^|[/_])keep_prob(ability)?$", re.I)
#: ops that produce no tensor a caller would want as the model's output
_NOT_OUTPUTS = {"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert", "SaveV2", "RestoreV2"}


def convert_tf(src: str | os.PathLike, out_path: str | os.PathLike, *, task: str, channels, labels=None,
               normalize=None, spatial_shape=None, input_node: str | None = None,
               output_nodes: Sequence[str] | None = None, flags: Mapping[str, str] | None = None,
               opset: int = 17, overwrite: bool = False) -> dict:
    """Convert a frozen TF graph (.pb) or a SavedModel folder to `out_path` with its nxrt card.

    Returns the converters' result dict plus "flags": {placeholder: value set} for a graph.
    """
    path = Path(src)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; give a frozen graph (.pb) or a SavedModel folder")
    if path.is_dir():
        from .keras import convert_keras

        if input_node or output_nodes or flags:
            raise InputError("--input-node, --output-node and --flag apply to frozen graphs (.pb), not SavedModels")
        return convert_keras(path, out_path, task=task, channels=channels, labels=labels, normalize=normalize,
                             spatial_shape=spatial_shape, opset=opset, overwrite=overwrite)
    out = check_output_path(out_path, overwrite)
    card = make_card(task=task, layout="channels_last", channels=channels, labels=labels, normalize=normalize,
                     spatial_shape=spatial_shape)
    from .common import require

    tf, tf2onnx = require("tensorflow", "tf2onnx")
    from .keras import _first_line, _quiet, _sample_shape

    _quiet(tf, tf2onnx)
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception:
        raise InputError(f"{path}: not a TensorFlow GraphDef (a frozen .pb graph); a SavedModel is a folder") from None
    if not graph_def.node:
        raise InputError(f"{path}: the graph has no nodes")
    chosen = set_flags(tf, graph_def, flags or {}, str(path))
    x_node = _input_node(graph_def, input_node, str(path))
    outs = list(output_nodes) if output_nodes else _output_nodes(graph_def, str(path))
    names = {n.name for n in graph_def.node}
    for name in outs:
        if name not in names:
            raise InputError(f"{path}: no node '{name}'; nodes nothing reads: {', '.join(_output_nodes(graph_def))}")
    dims = [d.size if d.size >= 0 else None for d in x_node.attr["shape"].shape.dim]
    if not dims:
        raise InputError(f"{path}: the input '{x_node.name}' has no known rank; give the placeholder a shape")
    sample = _sample_shape(tuple(dims[1:]), card, str(path))
    try:
        with native_stderr_quiet():
            proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=[f"{x_node.name}:0"],
                                                      output_names=[f"{o}:0" for o in outs], opset=opset)
    except Exception as exc:
        raise ModelError(f"{path}: tf2onnx cannot convert the graph ({type(exc).__name__}: {_first_line(exc)})") \
            from exc
    _rename_input(proto, f"{x_node.name}:0", "input")
    left = random_nodes(proto)
    if left:
        raise ModelError(f"{path}: the converted graph still draws random numbers ({left[0].op_type} "
                         f"'{left[0].name}'); set the flag that turns dropout off with --flag NAME=VALUE")
    out_shape = tuple(d.dim_value or None for d in proto.graph.output[0].type.tensor_type.shape.dim)
    check_card(card, sample, out_shape)

    def reference(x: np.ndarray) -> list[np.ndarray]:
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run([f"{o}:0" for o in outs], {f"{x_node.name}:0": x})

    x = random_input((2, *sample))
    return finish(proto, out, card, reference, x, framework="TensorFlow graph", overwrite=overwrite,
                  extra={"source": str(path), "exporter": f"tf2onnx {tf2onnx.__version__}", "flags": chosen,
                         "input_node": x_node.name, "output_nodes": outs})


def set_flags(tf, graph_def, given: Mapping[str, str], source: str) -> dict[str, object]:
    """Turn PlaceholderWithDefault training switches into constants of their inference value (and
    `given` ones into the given value); returns {name: value set}."""
    chosen: dict[str, object] = {}
    by_name = {n.name: n for n in graph_def.node}
    for name in given:
        if name not in by_name or by_name[name].op != "PlaceholderWithDefault":
            flags = [n.name for n in graph_def.node if n.op == "PlaceholderWithDefault"]
            raise InputError(f"--flag {name}: no placeholder-with-default of that name in {source}; "
                             f"there are: {', '.join(flags) or 'none'}")
    for node in graph_def.node:
        if node.op != "PlaceholderWithDefault":
            continue
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
        if node.name in given:
            value = _parse_flag(given[node.name], dtype, node.name)
        elif dtype == tf.bool and TRAINING_FLAG.search(node.name):
            value = False
        elif dtype.is_floating and KEEP_PROB.search(node.name):
            value = 1.0
        else:
            continue
        node.op = "Const"
        del node.input[:]
        for key in list(node.attr):
            del node.attr[key]
        node.attr["dtype"].type = dtype.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(value, dtype=dtype.as_numpy_dtype)))
        chosen[node.name] = value
    return chosen


def _parse_flag(text: str, dtype, name: str):
    low = str(text).strip().lower()
    if dtype.is_bool:
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise InputError(f"--flag {name}={text}: the placeholder is boolean; give true or false")
    try:
        return float(low) if dtype.is_floating else int(low)
    except ValueError:
        raise InputError(f"--flag {name}={text}: not a number for a {dtype.name} placeholder") from None


def _input_node(graph_def, name: str | None, source: str):
    placeholders = [n for n in graph_def.node if n.op == "Placeholder"]
    if name is not None:
        found = [n for n in placeholders if n.name == name]
        if not found:
            raise InputError(f"--input-node {name}: no placeholder of that name in {source}; there are: "
                             f"{', '.join(n.name for n in placeholders) or 'none'}")
        return found[0]
    floats = [n for n in placeholders if n.attr["dtype"].type in (1, 2, 19)]  # float, double, half
    if len(floats) != 1:
        raise InputError(f"{source}: {len(floats)} float placeholders ({', '.join(n.name for n in floats) or 'none'}); "
                         "name the image input with --input-node NAME")
    return floats[0]


def _output_nodes(graph_def, source: str | None = None) -> list[str]:
    read = {i.split(":")[0].lstrip("^") for n in graph_def.node for i in n.input}
    sinks = [n.name for n in graph_def.node if n.name not in read and n.op not in _NOT_OUTPUTS]
    if source is not None and not sinks:
        raise InputError(f"{source}: no node could be the output; name it with --output-node NAME")
    return sinks


def _rename_input(proto, old: str, new: str) -> None:
    for vi in proto.graph.input:
        if vi.name == old:
            vi.name = new
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
