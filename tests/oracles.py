"""Independent oracles for gradient tests: float64 finite differences on the ONNX reference evaluator.

The gradient under test is computed by nxrt's emitted graph on onnxruntime (float32). The oracle
never touches nxrt's rules: it evaluates the forward graph alone, in float64, with onnx's own
reference implementation of every op, and differentiates it numerically.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from nxrt.autodiff import add_gradients
from nxrt.graph import GraphInfo, infer_shapes


def make_model(nodes, inputs: dict[str, np.ndarray], output: str, initializers: dict | None = None,
               opset: int = 17, input_shapes: dict | None = None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                       (input_shapes or {}).get(k, list(v.shape))) for k, v in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def nxrt_vjp(model: onnx.ModelProto, inputs: dict[str, np.ndarray], wrt: list[str], seed: np.ndarray,
             guided: bool = False, maxpool: str = "indices") -> dict[str, np.ndarray]:
    """Gradients of <output, seed> w.r.t. `wrt`, computed by the augmented graph on onnxruntime."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    work = infer_shapes(work)
    out = work.graph.output[0].name
    work.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, list(seed.shape)))
    grads = add_gradients(work, out, "seed", wrt, guided=guided, info=GraphInfo(work), maxpool=maxpool)
    for t in wrt:
        work.graph.node.append(helper.make_node("Identity", [grads[t]], [f"grad_{t}"]))
        work.graph.output.append(helper.make_tensor_value_info(f"grad_{t}", TensorProto.FLOAT, None))
    del work.graph.value_info[:]
    work = infer_shapes(work)
    del work.graph.value_info[:]
    for o in work.graph.output:  # ops whose shape inference onnx lacks (GroupNormalization)
        if not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(work, full_check=True)
    for node in work.graph.node:
        assert node.domain in ("", "ai.onnx"), node
    sess = ort.InferenceSession(work.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(inputs)
    feeds["seed"] = seed.astype(np.float32)
    names = [f"grad_{t}" for t in wrt]
    return dict(zip(wrt, sess.run(names, feeds), strict=True))


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    return m


def reference_forward(model: onnx.ModelProto):
    ref = ReferenceEvaluator(to_float64(model))
    out = model.graph.output[0].name

    def run(feeds):
        return ref.run([out], {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
                               for k, v in feeds.items()})[0]

    return run


def ort_forward(model: onnx.ModelProto):
    """Forward on onnxruntime in float32: an exact oracle for *linear* ops at any step size."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(feeds):
        return sess.run(None, {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
                               for k, v in feeds.items()})[0].astype(np.float64)

    return run


def fd_vjp(model: onnx.ModelProto, inputs: dict[str, np.ndarray], wrt: list[str], seed: np.ndarray,
           eps: float = 1e-6, forward=None) -> dict[str, np.ndarray]:
    """Central finite differences of <f(x), seed> in float64, element by element.

    forward: the function to differentiate (dict of arrays -> array); default the onnx reference
    evaluator on the float64 model.
    """
    f = forward or reference_forward(model)
    seed = seed.astype(np.float64)
    feeds = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in inputs.items()}
    grads = {}
    for name in wrt:
        x = feeds[name]
        g = np.zeros_like(x)
        for i in range(x.size):
            orig = x.flat[i]
            x.flat[i] = orig + eps
            up = np.sum(f(feeds) * seed)
            x.flat[i] = orig - eps
            down = np.sum(f(feeds) * seed)
            x.flat[i] = orig
            g.flat[i] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
