"""Models that would give a silent wrong answer: random ops (refused) and gradient paths through
piecewise-constant ops (refused when nothing else is left, said out loud otherwise)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nxrt
from tests.builders import run_cli, seg_model, write_case
from tests.oracles import fd_vjp, rel_err

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
F = RNG.standard_normal((4, 2)).astype(np.float32)


def classifier(middle: list, tail: str = "r2", extra_inits=()) -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv -> Relu (r) -> `middle` nodes (ending in `tail`) -> GAP -> Flatten -> MatMul."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *middle,
             helper.make_node("GlobalAveragePool", [tail], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "F"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(F, "F"), *extra_inits]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tf1_dropout() -> onnx.ModelProto:
    """What tf2onnx makes of a TF1 dropout left in training mode: mask = Floor(U[0,1) + keep)."""
    keep = numpy_helper.from_array(np.array(0.5, np.float32), "keep")
    return classifier([helper.make_node("RandomUniformLike", ["r"], ["u"], name="dropout/random_uniform"),
                       helper.make_node("Add", ["u", "keep"], ["k"], name="dropout/add"),
                       helper.make_node("Floor", ["k"], ["mask"], name="dropout/Floor"),
                       helper.make_node("Mul", ["r", "mask"], ["r2"], name="dropout/mul")], extra_inits=[keep])


def dropout(training: bool) -> onnx.ModelProto:
    flag = numpy_helper.from_array(np.array(training), "training")
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    return classifier([helper.make_node("Dropout", ["r", "ratio", "training"], ["r2"], name="drop")],
                      extra_inits=[flag, ratio])


X = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("build, names", [(tf1_dropout, "RandomUniformLike 'dropout/random_uniform'"),
                                          (lambda: dropout(True), "Dropout 'drop'")])
def test_random_models_are_refused_before_anything_runs(build, names, tmp_path):
    with pytest.raises(nxrt.ModelError) as info:
        nxrt.Explainer(build())
    message = str(info.value)
    assert names in message and "training mode" in message and "\n" not in message
    with pytest.raises(nxrt.ModelError, match="draws random numbers"):
        nxrt.augment(build())
    path = tmp_path / "m.onnx"
    onnx.save_model(build(), str(path))
    inspect = run_cli("inspect", path)
    assert inspect.returncode == 0 and "random ops (refused" in inspect.stdout, inspect.stderr
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "draws random numbers" in lines[0], res.stderr


def test_dropout_in_inference_mode_is_the_identity():
    """Dropout(training_mode=False) is accepted, and its gradient is that of the deterministic
    model (float64 finite differences on onnx's reference evaluator)."""
    model = dropout(False)
    got = nxrt.Explainer(model).explain(X, "vanilla", target=1).attribution
    seed = np.array([[0.0, 1.0]])
    want = fd_vjp(model, {"x": X}, ["x"], seed)["x"]
    assert rel_err(got, want) < 1e-4


def quantised(every_path: bool) -> onnx.ModelProto:
    """Relu output rounded to a grid (a fake-quantisation step) on its way to the output; with
    every_path=False the unrounded value is added back, so a gradient still flows."""
    half = numpy_helper.from_array(np.array(4.0, np.float32), "scale")
    nodes = [helper.make_node("Mul", ["r", "scale"], ["s"], name="q/scale"),
             helper.make_node("Round", ["s"], ["q"], name="q/round"),
             helper.make_node("Div", ["q", "scale"], ["rq"], name="q/unscale")]
    if every_path:
        return classifier(nodes, tail="rq", extra_inits=[half])
    return classifier([*nodes, helper.make_node("Add", ["rq", "r"], ["r2"], name="q/add")], extra_inits=[half])


def test_a_gradient_cut_by_piecewise_constant_ops_is_refused():
    with pytest.raises(nxrt.ModelError) as info:
        nxrt.Explainer(quantised(every_path=True)).explain(X, "vanilla", target=1)
    message = str(info.value)
    assert "no gradient reaches 'x'" in message and "Round 'q/round'" in message and "\n" not in message
    # a forward-only method still works: occlusion needs no gradient
    occ = nxrt.Explainer(quantised(every_path=True)).explain(X, "occlusion", target=1, patch=4)
    assert occ.shape == X.shape and not occ.warnings


def test_a_gradient_partly_through_piecewise_constant_ops_is_said_out_loud(tmp_path):
    """The gradient that is left is exact (finite differences of the model; Round's derivative is
    0 away from its jumps), and every result says which node it passes through as zero."""
    model = quantised(every_path=False)
    with pytest.warns(nxrt.NxrtWarning, match="Round 'q/round'"):
        e = nxrt.Explainer(model).explain(X, "vanilla", target=1)
    (line,) = e.warnings
    assert "the gradient is zero through Round 'q/round'" in line
    want = fd_vjp(model, {"x": X}, ["x"], np.array([[0.0, 1.0]]), eps=1e-4)["x"]
    assert rel_err(e.attribution, want) < 1e-3
    # the CLI prints it once per method and records it in summary.json
    path = seg_with_round(tmp_path / "seg.onnx")
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-m", "gradcam", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if ln.startswith("nxrt: warning: c: ") and "gradient" in ln]
    # Grad-CAM's layer lies before the Round too, so its gradient misses the same branch
    assert [ln.split(": ")[3] for ln in warned] == ["vanilla", "gradcam"], res.stderr
    assert all("the gradient is zero through Round 'round'" in ln for ln in warned)
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    for method in ("vanilla", "gradcam"):
        assert "Round 'round'" in summary["methods"][method]["warnings"][0]


def seg_with_round(path):
    """The tiny test segmenter with a rounded copy of its output added to it."""
    seg_model(path)
    model = onnx.load(str(path))
    out = model.graph.output[0].name
    model.graph.node[-1].output[0] = "pre"
    model.graph.node.extend([helper.make_node("Round", ["pre"], ["rounded"], name="round"),
                             helper.make_node("Add", ["pre", "rounded"], [out], name="add")])
    onnx.save_model(model, str(path))
    return path


def two_conv_segmenter(final_channels: int) -> onnx.ModelProto:
    """Conv 4->8 (k3) -> Relu -> Conv 8->final (1x1 logits), 8^3."""
    w1 = numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3, 3)).astype(np.float32) * 0.3, "W1")
    w2 = numpy_helper.from_array(RNG.standard_normal((final_channels, 8, 1, 1, 1)).astype(np.float32), "W2")
    nodes = [helper.make_node("Conv", ["x", "W1"], ["features"], pads=[1] * 6, name="conv1"),
             helper.make_node("Relu", ["features"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             ["N", final_channels, 8, 8, 8])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("final_channels, want", [(3, "features"), (8, "logits"), (12, "logits")])
def test_gradcam_default_layer_is_never_a_segmenters_logits_conv(final_channels, want):
    """The deepest Conv with more channels than the output: the 8-channel features, not the 3-channel
    logits; when no Conv has more channels than the output, the last Conv."""
    ex = nxrt.Explainer(two_conv_segmenter(final_channels), task="segmentation")
    x = RNG.standard_normal((1, 4, 8, 8, 8)).astype(np.float32)
    e = ex.explain(x, "gradcam")
    assert e.layer == want
    np.testing.assert_array_equal(e.attribution, ex.explain(x, "gradcam", layer=want).attribution)
