"""Automatic batch size and batch-size independence of every batched method."""

from __future__ import annotations

import numpy as np
import pytest

import nxrt
from nxrt.engine import activation_bytes_per_sample, auto_batch_size
from tests.builders import tiny_classifier


def test_auto_batch_size_keeps_the_estimate_under_the_budget():
    aug = nxrt.augment(tiny_classifier())
    per_sample = activation_bytes_per_sample(aug)
    # the tiny classifier keeps its Relu output (4x8x8) for the backward, plus 3 x the largest tensor
    assert per_sample >= 4 * (4 * 64) * 4
    for budget in (per_sample, 3 * per_sample + 1, 10 * per_sample - 1):
        size = auto_batch_size(aug, budget=budget)
        assert size * per_sample <= budget < (size + 1) * per_sample
    assert auto_batch_size(aug, budget=10 ** 12) == 64  # capped
    with pytest.raises(nxrt.InputError, match="GiB are available"):
        auto_batch_size(aug, budget=per_sample - 1)


@pytest.mark.parametrize("method, params", [("ig", {"steps": 7}), ("sg", {"samples": 5, "seed": 1}),
                                            ("occlusion", {"patch": 3, "stride": 2}),
                                            ("smoothgrad", {"samples": 3, "base": "ig", "base_params": {"steps": 4},
                                                            "seed": 2})])
def test_results_do_not_depend_on_the_batch_size(method, params):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    results = [nxrt.Explainer(tiny_classifier(), batch_size=b).explain(x, method, target=1, **params)
               for b in (1, 2, 3, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-7)


def test_a_model_exported_for_batch_one_still_runs_in_batches(tmp_path):
    """MONAI's ResNet flattens with x.view(x.size(0), -1): exported with a static batch of 1, that
    is a Reshape to [1, -1], which would fold an IG chunk's batch into the features. nxrt rewrites
    such Reshapes to keep the batch axis; IG then gives the same result at every batch size, and
    equals torch's (Captum-free) gradient of the batch-1 model."""
    import torch

    from tests.nets import export_torch, resnet2d

    torch.manual_seed(0)
    net = resnet2d()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    path = export_torch(net, torch.tensor(x), tmp_path / "resnet_b1.onnx", dynamo=False, dynamic_batch=False)
    import onnx

    reshapes = [n for n in onnx.load(path).graph.node if n.op_type == "Reshape"]
    assert reshapes, "the export no longer bakes the batch into a Reshape: this test tests nothing"
    results = [nxrt.Explainer(path, task="classification", batch_size=b).explain(x, "ig", target=1, steps=8)
               for b in (1, 4)]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[0, 1].backward()
    grad = nxrt.Explainer(path, task="classification", batch_size=4).explain(x, "vanilla", target=1)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_knowing_the_scores_costs_no_session_and_each_session_decides_its_batch_once():
    """The number of scores comes from shape inference (no onnxruntime session); the automatic batch
    size of the gradient session is the estimate from its own augmented graph, and a pure gradient
    method builds that one session and no forward session."""
    ex = nxrt.Explainer(tiny_classifier())
    x = np.zeros((1, 3, 8, 8), np.float32)
    ctx = ex.context(x)
    assert ctx.num_scores == 2
    assert ex.stats()["sessions_built"] == 0
    assert ctx.batch_size == auto_batch_size(nxrt.augment(tiny_classifier())) > 1
    assert ex.stats()["sessions_built"] == 1
    ex.explain(x, "vanilla", target=1)
    ex.explain(x, "ig", target=1, steps=4, delta=False)
    assert ex.stats()["sessions_built"] == 1  # the same gradient session; no forward session


def _cnn3d():
    import torch.nn as nn

    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("dynamo", [True, False])
def test_a_model_exported_for_a_fixed_batch_explains_any_number_of_samples(tmp_path, dynamo):
    """torch exports with a fixed batch of 2 (the dynamo exporter bakes it into a Reshape): 1, 2 and
    3 samples, each against torch's float64 autograd of the same network."""
    import torch

    from tests.nets import export_torch
    from tests.oracles import rel_err

    torch.manual_seed(0)
    net = _cnn3d()
    path = export_torch(net, torch.randn(2, 2, 8, 8, 8), tmp_path / "fixed2.onnx", dynamo=dynamo)
    ex = nxrt.Explainer(path, task="classification")
    for k in (1, 2, 3):
        x = np.random.default_rng(k).standard_normal((k, 2, 8, 8, 8)).astype(np.float32)
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        net.double()(xt)[:, 1].sum().backward()
        net.float()
        got = ex.explain(x, "ig", target=1, steps=4).attribution if k == 3 else \
            ex.explain(x, "vanilla", target=1).attribution
        if k != 3:
            assert rel_err(got, xt.grad.numpy()) < 1e-4, k
    # IG at 3 samples (chunks of 2 path points, padded) equals IG sample by sample
    single = np.concatenate([ex.explain(x[i:i + 1], "ig", target=1, steps=4).attribution for i in range(3)])
    np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-7)


def test_a_batch_baked_in_beyond_reshapes_runs_padded_chunks():
    """A bias stored once per sample ([2, K] initializer, equal rows: an exporter materialising a
    broadcast) pins the batch at 2 wherever shape inference goes: nxrt keeps the static batch and
    runs 2 samples at a time, padding a short chunk with zero rows whose seeds are zero. Each
    sample's gradient equals float64 finite differences."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.oracles import fd_vjp, rel_err

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "F"),
             numpy_helper.from_array(np.tile(rng.standard_normal((1, 2)).astype(np.float32), (2, 1)), "B")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Tanh", ["c"], ["t"]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "F"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])]
    graph = helper.make_graph(nodes, "baked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ex = nxrt.Explainer(model, task="classification")
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    got = ex.explain(x, "vanilla", target=1).attribution
    assert ex.context(x[:1]).batch_size == 2
    for i in range(3):
        pair = np.concatenate([x[i:i + 1], x[i:i + 1]])  # the model takes exactly 2; seed only row 0
        want = fd_vjp(model, {"x": pair}, ["x"], np.array([[0.0, 1.0], [0.0, 0.0]]))["x"][:1]
        assert rel_err(got[i:i + 1], want) < 1e-4, i
    np.testing.assert_allclose(ex.predict(x)[:, 1], [ex.predict(np.concatenate([x[i:i + 1]] * 2))[0, 1]
                                                     for i in range(3)], rtol=1e-6)


def test_max_memory_bounds_the_automatic_batch():
    """The automatic batch is the largest that fits the budget by the graph's own estimate; a
    budget below one sample is a one-line error naming --max-memory."""
    from nxrt.engine import parse_bytes

    assert (parse_bytes("8G"), parse_bytes("512MiB"), parse_bytes("2kb"), parse_bytes(1000)) == \
        (8 << 30, 512 << 20, 2048, 1000)
    with pytest.raises(nxrt.InputError, match="memory size 'lots'"):
        parse_bytes("lots")
    per_sample = activation_bytes_per_sample(nxrt.augment(tiny_classifier()))
    x = np.zeros((1, 3, 8, 8), np.float32)
    for k in (1, 5, 20):
        ex = nxrt.Explainer(tiny_classifier(), max_memory=k * per_sample + per_sample // 2)
        assert ex.context(x).batch_size == k
    with pytest.raises(nxrt.InputError, match="--max-memory"):
        nxrt.Explainer(tiny_classifier(), max_memory=per_sample // 2).explain(x, "vanilla", target=1)


@pytest.mark.parametrize("method, params, unit, marks", [
    ("ig", {"steps": 10}, "path points", [3, 6, 9, 10]),
    ("sg", {"samples": 7, "seed": 0}, "noisy copies", [3, 6, 7]),
    ("gig", {"steps": 4}, "steps", [1, 2, 3, 4]),
    ("occlusion", {"patch": 4, "stride": 2}, "patches", None),
])
def test_long_methods_report_their_progress(method, params, unit, marks):
    calls = []
    ex = nxrt.Explainer(tiny_classifier(), batch_size=3)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ex.explain(x, method, target=1, progress=lambda *a: calls.append(a), **params)
    assert {c[2] for c in calls} == {unit}
    if marks is None:  # occlusion: 3 x 3 windows of 4 (stride 2) over 8 x 8, in chunks of 3
        marks = [3, 6, 9]
    assert [c[0] for c in calls] == marks and all(c[1] == marks[-1] for c in calls)
