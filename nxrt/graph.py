"""Small helpers over ONNX protos: loading, saving, shapes, constants and a node builder.

Everything that touches `onnx` protos directly and is not specific to one op lives here, so
that the autodiff rules read as one-line maths and the passes as graph surgery.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError

#: Lowest default-domain opset nxrt emits; older models are converted up to it first.
MIN_OPSET = 17
#: Highest IR version written: onnxruntime-gpu 1.31 refuses IR 14, which onnx 1.23 writes by default.
MAX_IR_VERSION = 10
#: Protobuf cannot serialise a message above 2 GiB; above this, tensors go to external data.
PROTOBUF_LIMIT = 2**31 - 1
#: Initializers larger than this (bytes) are not needed for shape inference and are left out of it.
_SKELETON_BYTES = 4096

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


# --------------------------------------------------------------------------- load / save


def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) or pass a ModelProto through unchanged.

    Raises ModelError with the file name and the fix when the path is missing, the file is not
    ONNX, or its external data file is missing.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; give the path of an .onnx model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, sometimes RuntimeWarning-ish errors
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                         "re-export it or check the file is not truncated") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path}: not an ONNX model (empty graph); re-export it")
    damage = _damage(proto)
    if damage:
        raise ModelError(f"{path}: not a valid ONNX model ({damage}); the file may be damaged: copy it again or "
                         "re-export it")
    missing = sorted({loc for loc in _external_locations(proto)
                      if not (path.parent / loc).exists()})
    if missing:
        raise ModelError(f"{path}: external data file {missing[0]} is missing; keep it next to "
                         "the model (it holds the weights)")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read its external weight data ({exc}); "
                         "re-export the model") from exc
    return proto


def _damage(proto: onnx.ModelProto) -> str | None:
    """Why a model that parsed cannot be what its exporter wrote, or None. A flipped byte often
    still parses as protobuf; it then shows as a name that is not UTF-8 or as a tensor nothing
    produces. (onnx.checker would also flag exports nxrt handles, e.g. outputs without shapes.)"""
    graph = proto.graph
    names = [v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
    bad = next((n for n in names if isinstance(n, bytes)), None)  # protobuf gives invalid UTF-8 as bytes
    if bad is not None:
        return f"the name {bad!r} is not valid UTF-8"
    try:
        known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
        for node in graph.node:
            known.update(node.output)
        for node in graph.node:
            for name in node.input:
                if name not in known and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                 for a in node.attribute):
                    return f"node '{node.name}' ({node.op_type or 'no op type'}) reads {name!r}, which nothing produces"
        for out in graph.output:
            if out.name not in known:
                return f"the output '{out.name}' is produced by no node"
    except UnicodeDecodeError as exc:
        return f"a name is not valid UTF-8: {exc}"
    try:  # the checker reads every string (on the weight-free skeleton: milliseconds)
        onnx.checker.check_model(weight_free(proto))
    except UnicodeDecodeError as exc:
        return f"a string in it is not valid UTF-8: {exc}"
    except Exception:  # noqa: S110 - what else it flags nxrt reports itself, more precisely
        pass
    return None


def _external_locations(model: onnx.ModelProto) -> Iterable[str]:
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    yield entry.value


def model_bytes(model: onnx.ModelProto) -> int:
    """Size of the model's tensors in bytes (without protobuf overhead)."""
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else 0
        total += 4 * len(tensor.float_data) + 8 * len(tensor.int64_data) + 8 * len(tensor.double_data)
    return total


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external: bool | None = None) -> Path:
    """Save atomically; weights go to `<name>.data` beside it when the model exceeds 2 GiB.

    external=None decides by size, True/False forces it. The model proto is not modified.
    """
    from .errors import OutputError

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp_data = tmp.with_name(tmp.name + ".data")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder of the path should be
            import errno

            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        forced = external is True
        if external is None:
            external = model_bytes(model) > PROTOBUF_LIMIT - (64 << 20)
        if external:
            data_name = path.name + ".data"
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=256 if forced else 1024)
            # the proto records the data file's name: rewrite it to the final name before renaming
            final = onnx.load(str(tmp), load_external_data=False)
            for tensor in onnx.external_data_helper._get_all_tensors(final):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(final, str(tmp))
            if tmp_data.exists():
                os.replace(tmp_data, path.with_name(data_name))
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
        return path
    except OSError as exc:  # said for `path`: the temporary names mean nothing to the user
        raise OutputError(path, exc) from exc
    finally:
        for leftover in (tmp, tmp_data):
            if leftover.exists():
                leftover.unlink()


# --------------------------------------------------------------------------- shapes and types


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def weight_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large initializers, which become graph inputs of the same type and
    shape (all that shape inference and the checker need of them): small above any size, and
    built field by field, because copying the whole model first would duplicate every weight
    (100 MB for a ResNet50) just to delete it again."""
    skeleton = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name == "graph":
            continue
        if hasattr(value, "extend"):  # a repeated field (strings have no extend)
            getattr(skeleton, field.name).extend(value)
        elif field.message_type is not None:
            getattr(skeleton, field.name).CopyFrom(value)
        else:
            setattr(skeleton, field.name, value)
    graph, g = model.graph, skeleton.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    g.sparse_initializer.extend(graph.sparse_initializer)
    present = {i.name for i in graph.input}
    for init in graph.initializer:
        if _tensor_nbytes(init) > _SKELETON_BYTES:
            if init.name not in present:
                g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.append(init)
    return skeleton


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that also works above 2 GiB, without copying the weights: the
    `weight_free` skeleton of the model, carrying the inferred value_info and output types."""
    try:
        return onnx.shape_inference.infer_shapes(weight_free(model), check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {exc}; re-export it with a "
                         "recent exporter") from exc


def infer_shapes_inplace(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the model's value_info by the inferred one (and fill in output types it lacks)."""
    inferred = shape_skeleton(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for declared, found in zip(model.graph.output, inferred.graph.output, strict=True):
        if dims_of(declared) is None and dims_of(found) is not None:
            declared.type.CopyFrom(found.type)
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with inferred value_info (see `shape_skeleton`; for lookups alone,
    `GraphInfo.of(model)` needs no copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return infer_shapes_inplace(out)


def _tensor_nbytes(t: TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    if t.data_location == TensorProto.EXTERNAL:
        return PROTOBUF_LIMIT
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * 8


def dims_of(vi: onnx.ValueInfoProto) -> tuple | None:
    """Static dims of a value info: ints where known, the dim_param string or None where not."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


class GraphInfo:
    """Read-only lookups over a shape-inferred graph: shapes, dtypes, constants, producers."""

    def __init__(self, model: onnx.ModelProto, inferred: onnx.ModelProto | None = None):
        g = model.graph
        self.model = model
        self.opset = opset_of(model)
        self.initializers = {t.name: t for t in g.initializer}
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        shapes = (inferred or model).graph
        for vi in list(shapes.input) + list(shapes.output) + list(shapes.value_info):
            known = self.value_info.get(vi.name)
            # a declared output may carry no shape while inference found one: keep the richer entry
            if known is None or (dims_of(vi) is not None and vi.type.tensor_type.elem_type) \
                    or not known.type.tensor_type.elem_type:
                self.value_info[vi.name] = vi
        for t in g.initializer:
            self.value_info.setdefault(t.name, helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
        self._const_cache: dict[str, np.ndarray | None] = {}

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphInfo:
        """Lookups over `model` with shapes inferred on a weight-free skeleton (no model copy)."""
        return cls(model, shape_skeleton(model))

    def shape(self, name: str) -> tuple | None:
        vi = self.value_info.get(name)
        return dims_of(vi) if vi is not None else None

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shape(name)
        if s is None or any(not isinstance(d, int) or d <= 0 for d in s):
            return None
        return tuple(s)

    def elem_type(self, name: str) -> int | None:
        vi = self.value_info.get(name)
        if vi is None or not vi.type.tensor_type.elem_type:
            return None
        return vi.type.tensor_type.elem_type

    def is_float(self, name: str) -> bool | None:
        t = self.elem_type(name)
        return None if t is None else t in FLOAT_TYPES

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor that is an initializer or a Constant node output, else None."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        else:
            node = self.producer.get(name)
            if node is not None and node.op_type == "Constant":
                value = _constant_node_value(node)
            elif node is not None and node.op_type in ("Identity", "Cast") and node.input:
                inner = self.const(node.input[0])
                if inner is not None and node.op_type == "Cast":
                    to = attr(node, "to")
                    inner = inner.astype(helper.tensor_dtype_to_np_dtype(to))
                value = inner
        self._const_cache[name] = value
        return value


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value, or default when absent."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def attr_str(node: onnx.NodeProto, name: str, default: str = "") -> str:
    value = attr(node, name, None)
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- building


class Builder:
    """Appends nodes and initializers to a graph under fresh, readable names.

    `op()` returns the output name(s); `const()` adds an initializer. Names are prefixed so a
    reader of the augmented graph can tell which forward node each gradient node belongs to.
    """

    def __init__(self, model: onnx.ModelProto, prefix: str = "nxrt"):
        self.model = model
        self.graph = model.graph
        self.opset = opset_of(model)
        self.prefix = prefix
        self.scope = prefix
        self._taken = {n for node in self.graph.node for n in list(node.output) + [node.name]}
        self._taken |= {i.name for i in self.graph.input} | {t.name for t in self.graph.initializer}
        self._taken |= {o.name for o in self.graph.output}
        self._const_ids: dict[tuple, str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def fresh(self, hint: str) -> str:
        base = f"{self.scope}/{hint}"
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | Sequence[str] = 1, **attrs) -> str | list[str]:
        if isinstance(outputs, int):
            names = [self.fresh(op_type) for _ in range(outputs)]
        else:
            names = list(outputs)
            self._taken.update(names)
        node = helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type + "_node"),
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return names[0] if len(names) == 1 else names

    def const(self, value, dtype=np.float32, hint: str = "const") -> str:
        """An initializer with this value; small constants are shared by value."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_ids:
                return self._const_ids[key]
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_ids[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64, "ints")

    # --- ops whose signature changed between opsets: one place that knows both conventions

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool = True) -> str:
        """ReduceSum/Mean/Max/... over `axes` (None: all axes); axes as input where the opset wants it."""
        axes_as_input = op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if axes is None:
            return self.op(op_type, x, keepdims=int(keepdims))
        if axes_as_input:
            return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, self.ints(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", x, self.ints(axes))

    def shape(self, x: str) -> str:
        return self.op("Shape", x)

    def reshape_like(self, g: str, like: str) -> str:
        return self.op("Reshape", g, self.shape(like))

    def zeros_like(self, x: str, dtype: int = TensorProto.FLOAT) -> str:
        return self.op("ConstantOfShape", self.shape(x),
                       value=helper.make_tensor("zero", dtype, [1], [0]))

    def flush(self) -> None:
        """Append the nodes built so far to the graph (in build order, which is topological)."""
        self.graph.node.extend(self.nodes)
        self.nodes = []


def finish_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clamp the IR version to one the runtime accepts and drop stale value_info."""
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    return model


def convert_opset(model: onnx.ModelProto, target: int = MIN_OPSET) -> onnx.ModelProto:
    """Bring a model below MIN_OPSET up to it (the emitted gradient ops need opset >= 17)."""
    if opset_of(model) >= target:
        return model
    try:
        from onnx import version_converter
        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        raise ModelError(f"the model uses opset {opset_of(model)} and could not be converted to "
                         f"opset {target} ({exc}); re-export it with opset >= {target}") from exc
    return converted


# --------------------------------------------------------------------------- constant folding



def fold_constants(model: onnx.ModelProto, passes: int = 4) -> onnx.ModelProto:
    """Fold (`fold_once`) until nothing more folds: a folded pad or reshape target gives the next
    tensors static shapes, whose Shape() chains fold in the next pass (SwinUNETR's window
    partition needs two). At most `passes` passes."""
    for _ in range(passes):
        folded = fold_once(model)
        if len(folded.graph.node) == len(model.graph.node):
            return folded
        model = folded
    return model


def fold_once(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace tensors computed only from constants and static shapes by initializers.

    Exporters compute pads, reshape targets and slice bounds at run time from Shape() chains
    (torch's legacy exporter) or from chains of constant ops; the autodiff rules need them as
    constants. The subgraph that computes them is evaluated once with onnxruntime (Shape inputs
    replaced by zero tensors of the inferred shape, at batch sizes 1 and 2: only values that do not
    depend on the batch size are folded, so a dynamic batch axis stays dynamic).
    """
    import onnxruntime as ort

    from .ops import RANDOM_OPS

    inferred = GraphInfo.of(model)
    g = model.graph
    known = {t.name for t in g.initializer}
    shape_inputs: dict[str, tuple] = {}
    # the batch axis: the first graph input's symbolic first dim (fed at 1 and 2 below)
    data_inputs = [i for i in g.input if i.name not in known]
    first = data_inputs[0].type.tensor_type.shape.dim if data_inputs else []
    batch = first[0].dim_param if first and first[0].HasField("dim_param") else None
    nodes = []
    for node in g.node:
        if node.op_type in RANDOM_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("Shape", "Size"):
            shape = inferred.shape(node.input[0])
            if shape is None or any(not isinstance(d, int) for d in shape[1:]):
                continue
            if shape and not isinstance(shape[0], int) and shape[0] != batch:
                continue  # a symbolic first axis that is not the batch (e.g. batch x windows): unknown here
            shape_inputs[node.input[0]] = shape
        elif not all(i in known or not i for i in node.input):
            continue
        if any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            continue
        nodes.append(node)
        known.update(o for o in node.output if o)
    produced = {o for n in nodes for o in n.output if o}
    consumers = {i for n in g.node if n not in nodes for i in n.input} | {o.name for o in g.output}
    boundary = sorted(t for t in produced if t in consumers)
    if not boundary:
        return model
    # (a Shape whose input is itself computed inside the subgraph reads that, not a feed)
    feeds_in = [t for t in shape_inputs if t not in {i.name for i in g.initializer} and t not in produced]
    sub = helper.make_graph(
        nodes, "fold",
        [helper.make_tensor_value_info(t, inferred.elem_type(t) or TensorProto.FLOAT,
                                       ["N"] + list(shape_inputs[t][1:])) for t in feeds_in],
        [helper.make_tensor_value_info(t, inferred.elem_type(t) or 0, None) for t in boundary],
        initializer=[t for t in g.initializer if t.name in {i for n in nodes for i in n.input}])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import)
    sub_model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(sub_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runs = []
        for batch in (1, 2):
            feeds = {}
            for t in feeds_in:
                dims = [batch if not isinstance(shape_inputs[t][0], int) else shape_inputs[t][0]]
                dims += list(shape_inputs[t][1:])
                dtype = helper.tensor_dtype_to_np_dtype(inferred.elem_type(t) or TensorProto.FLOAT)
                feeds[t] = np.zeros(dims, dtype)
            runs.append(sess.run(boundary, feeds))
    except Exception:
        return model  # folding is an optimisation: a subgraph onnxruntime cannot run stays as it is
    folded = {}
    for name, a, b in zip(boundary, runs[0], runs[1], strict=True):
        if a.shape == b.shape and np.array_equal(a, b) and a.dtype != object:
            folded[name] = a
    if not folded:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [n for n in out.graph.node if not (n.output and all(o in folded for o in n.output if o))]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items())
    return eliminate_dead_nodes(out)


def eliminate_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes whose outputs nobody uses, and initializers nobody reads."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs read outer-scope names
                if a.type == onnx.AttributeProto.GRAPH:
                    needed.update(i for n in a.g.node for i in n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    return model
