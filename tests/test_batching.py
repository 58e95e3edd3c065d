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
