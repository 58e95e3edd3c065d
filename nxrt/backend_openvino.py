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

import contextlib
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .engine import flush_subnormals
from .errors import InputError, ModelError

#: the provider name nxrt uses for this backend (not an onnxruntime execution provider)
OPENVINO = "OpenVINO"


@functools.cache
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


class _WorkingMemory:
    """Which compiled models keep their working memory. OpenVINO holds a compiled model's
    intermediate buffers from its first run until `release_memory`; here only the compiled models
    running now keep them: when a run starts, every other one -- another batch size, the
    forward-only graph beside a gradient graph -- gives its buffers back, and allocates them again
    at its own next run. Without this, IG at 96^3 held the batch-1 gradient graph's buffers (from
    the vanilla warm-up) beside the batch-4 ones, and peak RSS rose above onnxruntime's and
    Captum's (README "Backends"). Sessions are held weakly: a dropped session is not kept alive."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._running: dict[tuple, int] = {}  # (id(session), shape key) -> runs in flight
        self._holding: dict[tuple, tuple] = {}  # (id(session), shape key) -> (weakref(session), shape key)

    @contextlib.contextmanager
    def using(self, session, key):
        import weakref

        mine = (id(session), key)
        with self._lock:
            self._running[mine] = self._running.get(mine, 0) + 1
            for other, (ref, other_key) in list(self._holding.items()):
                if other != mine and not self._running.get(other):
                    owner = ref()
                    compiled = owner._compiled.get(other_key) if owner is not None else None
                    if compiled is not None:
                        compiled.release_memory()
                    del self._holding[other]
            self._holding[mine] = (weakref.ref(session), key)
        try:
            yield
        finally:
            with self._lock:
                self._running[mine] -= 1
                if not self._running[mine]:
                    del self._running[mine]


_WORKING_MEMORY = _WorkingMemory()


@dataclass(frozen=True)
class _Port:
    """What nxrt reads of an input or output (the `.name` of onnxruntime's NodeArg)."""

    name: str
    shape: tuple


#: the max-pool gradient rule OpenVINO's graphs are built with (`passes.augment(maxpool=...)`): the
#: CPU plugin runs MaxPool-with-indices in its reference kernel (0.34 s of ResNet50's 0.50 s
#: gradient); by equality with each window's maximum the gradient takes 0.20-0.22 s
MAXPOOL_GRADIENT = "equality"
#: input channels one convolution of the rewritten graph sums before its partial result is added
#: to the others (see `split_accumulations`) ...
CHANNELS_PER_SUM = 8
#: ... and at most this many partial sums per convolution: wider layers sum C/16 channels at a time
#: (ResNet50's 1x1 convolutions over 2048 channels as 256 sums of 8 ran 2.5x slower than onnxruntime)
MAX_PARTS = 16


def channels_per_sum(channels: int, chunk: int = CHANNELS_PER_SUM) -> int:
    """How many input channels one partial convolution sums: `chunk`, or more for layers wider than
    chunk x MAX_PARTS (then MAX_PARTS partial sums)."""
    return max(chunk, -(-channels // MAX_PARTS))


#: ops whose output jumps when their input crosses a threshold: in the backward part of a graph
#: (guided backprop's ReLU of the gradient) its own rounding can move a mask too
DISCONTINUOUS = {"Relu", "LeakyRelu", "PRelu", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Sign",
                 "Clip", "Abs", "Max", "Min", "Floor", "Ceil", "Round", "ArgMax", "ArgMin", "TopK", "MaxPool"}


def read_by_backward(model: onnx.ModelProto) -> set[str] | None:
    """The nodes (by their first output) whose values the backward part of an nxrt graph reads: every node upstream of a
    forward tensor that a node downstream of the score seed (`nxrt_seed`) takes as input. Only
    these can move a gradient's masks (a ReLU's, a max-pool's), where rounding turns into a
    discontinuous error; the rest of the forward is continuous in its rounding. Shape / Size read
    no values and stop the walk. A graph without a seed (a forward-only session) has none; one whose
    backward has a discontinuous op of its own (guided backprop) gets None: every node."""
    from .passes import SEED

    nodes = list(model.graph.node)
    backward, tainted = set(), {SEED}
    for k, node in enumerate(nodes):  # (topological order: producers come first)
        if tainted.intersection(node.input):
            backward.add(k)
            tainted.update(node.output)
    if any(nodes[k].op_type in DISCONTINUOUS for k in backward):
        return None
    producer = {out: node for k, node in enumerate(nodes) if k not in backward for out in node.output}
    todo = [t for k, node in enumerate(nodes) if k in backward for t in node.input if t in producer]
    upstream: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.output[0] in upstream or node.op_type in ("Shape", "Size"):
            continue
        upstream.add(node.output[0])
        todo.extend(t for t in node.input if t in producer)
    return upstream


def split_accumulations(model: onnx.ModelProto, chunk: int, only: set[str] | None = None) -> onnx.ModelProto:
    """The model with every Conv / ConvTranspose over more than `chunk` input channels (group 1,
    constant weights) computed as convolutions over `chunk` channels each, whose results are added
    (`only`: just the nodes whose first output is named there).

    Why: OpenVINO's CPU convolutions add up the products of all input channels in one running float32
    sum; over 32-64 channels that is 2.5-3.5x the rounding error of onnxruntime's or torch's (relative
    L2 against float64, 3x3x3: 5.1e-7 and 7.1e-7 vs 2.0e-7). In a gradient that error matters
    where it flips the sign of a pre-activation near zero -- each flip moves the ReLU / LeakyReLU
    mask of one voxel -- so the parity suite's ReLU networks came out 2-10x further from float64
    than torch's own float32. Sums of 8 channels bring OpenVINO to 2.6e-7; layers wider than 128
    channels are split into 16 sums (`channels_per_sum`)."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes, added = [], []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = weights.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 else None
        # Conv weights are [M, C, k...] (input channels on axis 1); ConvTranspose's [C, M, k...] (axis 0)
        axis = 1 if node.op_type == "Conv" else 0
        if w is None or group != 1 or w.dims[axis] <= chunk or (only is not None and node.output[0] not in only):
            nodes.append(node)
            continue
        size = channels_per_sum(w.dims[axis], chunk)
        array = numpy_helper.to_array(w)
        parts = list(range(0, array.shape[axis], size))
        sizes = numpy_helper.from_array(np.array([min(size, array.shape[axis] - p) for p in parts], np.int64),
                                        f"{node.output[0]}__split_sizes")
        xs = [f"{node.output[0]}__x{i}" for i in range(len(parts))]
        nodes.append(helper.make_node("Split", [node.input[0], sizes.name], xs, axis=1))
        added.append(sizes)
        total = None
        for i, start in enumerate(parts):
            piece = np.take(array, range(start, start + min(size, array.shape[axis] - start)), axis=axis)
            wi = numpy_helper.from_array(np.ascontiguousarray(piece), f"{node.output[0]}__w{i}")
            added.append(wi)
            bias = node.input[2:3] if i == len(parts) - 1 else []
            out = node.output[0] if i == len(parts) - 1 and total is None else f"{node.output[0]}__c{i}"
            conv = helper.make_node(node.op_type, [xs[i], wi.name, *bias], [out], name=f"{node.name}__{i}")
            conv.attribute.extend(node.attribute)
            nodes.append(conv)
            if total is not None:
                summed = node.output[0] if i == len(parts) - 1 else f"{node.output[0]}__s{i}"
                nodes.append(helper.make_node("Add", [total, out], [summed]))
                out = summed
            total = out
    if not added:
        return model
    used = {name for n in nodes for name in n.input}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    kept = [t for t in result.graph.initializer if t.name in used]  # (the split weights' originals go)
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept + added)
    return result


def explicit_instance_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every InstanceNormalization of a static spatial shape written out as the
    gradient rules compute it (`rules.standardise`: means one axis at a time).

    Why: OpenVINO runs InstanceNormalization as its fused MVN kernel, whose output is 2-3x further
    from float64 than onnxruntime's (BasicUNet's first block: 8.1e-7 vs 3.1e-7 relative L2), and on
    ReLU networks forward error becomes flipped masks in the gradient; the written-out form is not
    fused back (its reductions are not the single mean MVN's pattern looks for)."""
    from .autodiff.rules import standardise
    from .graph import Builder, GraphInfo

    if not any(n.op_type == "InstanceNormalization" for n in model.graph.node):
        return model
    info = GraphInfo.of(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    build = Builder(result, prefix="nxrt_ov")
    nodes = []
    for node in model.graph.node:
        shape = info.shape(node.input[0]) if node.op_type == "InstanceNormalization" else None
        if not shape or any(not isinstance(d, int) for d in shape[2:]):
            nodes.append(node)
            continue
        x, scale, bias = node.input
        rank = len(shape)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        build.nodes = []
        xhat, _ = standardise(build, x, list(range(2, rank)), list(shape[2:]), eps)
        per_channel = build.ints([1, -1] + [1] * (rank - 2))
        scaled = build.op("Mul", xhat, build.op("Reshape", scale, per_channel))
        build.op("Add", scaled, build.op("Reshape", bias, per_channel), outputs=[node.output[0]])
        nodes.extend(build.nodes)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


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

        from .graph import load_model, save_model

        self._core = ov.Core()
        proto = load_model(model)
        # the exact (split) sums only where a gradient's masks read the values: 8-channel convolutions
        # run 1.6x slower than OpenVINO's own (a forward of DynUNet 96^3: 0.50 s vs 0.31 s)
        proto = explicit_instance_norms(split_accumulations(proto, CHANNELS_PER_SUM, read_by_backward(proto)))
        try:
            with tempfile.TemporaryDirectory() as tmp:  # (OpenVINO reads ONNX from a file: any size)
                path = save_model(proto, Path(tmp) / "model.onnx", external=None)
                self._model = self._core.read_model(str(path))
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
        with _WORKING_MEMORY.using(self, key), flush_subnormals():  # (the thread's FP mode is restored after)
            result = compiled.create_infer_request().infer(feeds)
            names = output_names or [o.name for o in self._outputs]
            return [np.array(result[compiled.output(n)], copy=True) for n in names]

    def _compile(self, key: tuple, feeds: dict):
        import openvino as ov

        model = self._model.clone()
        model.reshape({port: ov.PartialShape(list(feeds[port.get_any_name()].shape)) for port in model.inputs
                       if port.get_any_name() in feeds})
        try:
            # CPU_DENORMALS_OPTIMIZATION switches flush-to-zero on in the compiling thread for good,
            # which would silently change the caller's numpy results: the thread's mode is restored
            with flush_subnormals(enable=False):
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
