"""Robustness and axiomatic metrics: max-sensitivity equals Captum's `sensitivity_max` for the same
perturbations (1e-4), avg-sensitivity their mean; completeness of integrated gradients is its own
convergence error and equals the score change computed by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.nets import export_torch, small_cnn2d


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    import torch

    import nxrt

    torch.manual_seed(0)
    model = small_cnn2d().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    path = export_torch(model, torch.from_numpy(x[:1]), tmp_path_factory.mktemp("m") / "cnn.onnx", dynamo=False,
                        dynamic_batch=True)
    return model, nxrt.Explainer(path, task="classification", layout="channels_first"), x


@pytest.mark.parametrize("method, captum_name", [("vanilla", "Saliency"), ("gradient_x_input", "InputXGradient")])
def test_max_sensitivity_equals_captum_sensitivity_max(cnn, method, captum_name):
    import captum.attr
    import torch
    from captum.metrics import sensitivity_max

    from nxrt.evaluation import evaluate

    model, ex, x = cnn
    seed, n, bound = 3, 6, 0.1
    e = ex.explain(x[:1], method, target=1)
    got = {name: evaluate(ex, x[:1], e, metrics=[name], seed=seed, **{name: {"nr_samples": n, "lower_bound": bound}})[
        name] for name in ("max_sensitivity", "avg_sensitivity")}  # each from the same seed: the same draws
    rng = np.random.default_rng(seed)  # the draws nxrt documents: one x-shaped array per perturbation, in order
    noise = [rng.uniform(-bound, bound, size=x[:1].shape).astype(np.float32) for _ in range(n)]
    queue = list(noise)

    def replay(inputs, perturb_radius):
        k = inputs.shape[0]
        out = inputs + torch.from_numpy(np.concatenate(queue[:k], axis=0))
        del queue[:k]
        return out

    explainer = getattr(captum.attr, captum_name)(model)
    kwargs = {"abs": False} if captum_name == "Saliency" else {}
    want = sensitivity_max(lambda inp: explainer.attribute(inp, target=1, **kwargs), torch.from_numpy(x[:1]),
                           perturb_func=replay, n_perturb_samples=n, max_examples_per_batch=1)
    assert got["max_sensitivity"] == pytest.approx(float(want[0]), abs=1e-4)
    # the mean, from the same perturbations explained by torch
    ref = explainer.attribute(torch.from_numpy(x[:1]), target=1, **kwargs).detach().numpy()
    ratios = [np.linalg.norm(explainer.attribute(torch.from_numpy(x[:1] + u), target=1, **kwargs).detach().numpy()
                             - ref) / np.linalg.norm(ref) for u in noise]
    assert got["avg_sensitivity"] == pytest.approx(float(np.mean(ratios)), abs=1e-4)
    assert got["max_sensitivity"] == pytest.approx(float(np.max(ratios)), abs=1e-4)


def test_completeness_of_integrated_gradients(cnn):
    import onnxruntime as ort

    from nxrt.evaluation import evaluate

    model, ex, x = cnn
    e = ex.explain(x, "integrated_gradients", target=2, steps=64)
    got = evaluate(ex, x, e, metrics=["completeness"])
    sess = ort.InferenceSession(ex.model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    f = sess.run(None, {ex.model.input_name: x})[0][:, 2]
    f0 = sess.run(None, {ex.model.input_name: np.zeros_like(x)})[0][:, 2]
    np.testing.assert_allclose(got["completeness_change"], f - f0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["completeness_sum"], e.attribution.reshape(2, -1).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got["completeness"], np.abs(e.extras["delta"]).reshape(-1) / np.abs(f - f0),
                               rtol=1e-3, atol=1e-6)  # IG's own convergence delta, relative
    assert np.all(got["completeness"] < 0.05)
