"""MPRT: nxrt's randomised weights, copied into the torch model, give the same per-layer
explanations (1e-4) and the same Spearman / SSIM similarities as scipy and scikit-image compute
from torch's maps; a map that ignores the weights (x itself) is reported as surviving."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.nets import export_torch, small_cnn2d


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    import torch

    import nxrt

    torch.manual_seed(1)
    model = small_cnn2d().eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    path = export_torch(model, torch.from_numpy(x), tmp_path_factory.mktemp("m") / "cnn.onnx", dynamo=False,
                        dynamic_batch=True)
    return model, nxrt.Explainer(path, task="classification", layout="channels_first"), x


def torch_saliency(model, x, target):
    import torch

    v = torch.from_numpy(x).requires_grad_()
    model(v)[0, target].backward()
    return v.grad.numpy()


def test_cascading_randomisation_matches_torch_with_the_same_weights(cnn):
    import torch
    from onnx import numpy_helper
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    from nxrt import passes
    from nxrt.evaluation import evaluate

    model, ex, x = cnn
    e = ex.explain(x, "vanilla", target=1)
    got = evaluate(ex, x, e, metrics=["mprt"], mprt={"skip_layers": False})
    layers = passes.weighted_layers(ex.model.proto)
    assert len(layers) == 4 and len(got["mprt_curve"]) == 4 and len(got["mprt_ssim_curve"]) == 4
    ref = np.abs(e.attribution)
    ref_map = np.abs(e.attribution[0].sum(axis=0))
    for k in range(len(layers)):
        chosen = [w for _, weights in layers[:k + 1] for w in weights]
        proto = passes.randomised(ex.model.proto, chosen, 42)
        twin = copy.deepcopy(model)
        state = twin.state_dict()
        for tensor in proto.graph.initializer:
            if tensor.name in chosen:
                state[tensor.name] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
        twin.load_state_dict(state)
        theirs = torch_saliency(twin, x, 1)
        ours = ex.with_weights(proto).explain(x, "vanilla", target=1).attribution
        assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())
        assert got["mprt_curve"][k] == pytest.approx(spearmanr(ref.ravel(), np.abs(theirs).ravel())[0], abs=1e-4)
        b = np.abs(theirs[0].sum(axis=0))
        dr = float(max((ref_map / ref_map.max()).max(), (b / b.max()).max()) - 0)
        want = structural_similarity(ref_map / ref_map.max(), b / b.max(), data_range=dr, win_size=7)
        assert got["mprt_ssim_curve"][k] == pytest.approx(want, abs=1e-4)
    assert got["mprt"] == got["mprt_curve"][-1]
    assert got["mprt"] < 0.5  # the gradient of a fully random network no longer resembles the trained one's


def test_skip_layers_explains_only_the_fully_randomised_model_and_eMPRT_rises(cnn):
    from nxrt.evaluation import evaluate

    model, ex, x = cnn
    e = ex.explain(x, "vanilla", target=1)
    full = evaluate(ex, x, e, metrics=["mprt"], mprt={"skip_layers": False})
    last = evaluate(ex, x, e, metrics=["mprt", "efficient_mprt"], mprt={"skip_layers": True})
    assert len(evaluate(ex, x, e, metrics=["mprt"])["mprt_curve"]) == 4  # Quantus' default: every layer
    assert len(last["mprt_curve"]) == 1 and last["mprt"] == pytest.approx(full["mprt"], abs=1e-12)
    assert last["efficient_mprt_entropy_after"] > 0 and np.isfinite(last["efficient_mprt"])


def test_randomised_weights_are_seeded_and_keep_each_tensors_scale(cnn):
    from onnx import numpy_helper

    from nxrt import passes

    _, ex, _ = cnn
    names = [w for _, weights in passes.weighted_layers(ex.model.proto) for w in weights]
    a, b = passes.randomised(ex.model.proto, names, 7), passes.randomised(ex.model.proto, names, 7)
    c = passes.randomised(ex.model.proto, names, 8)
    orig = {t.name: numpy_helper.to_array(t) for t in ex.model.proto.graph.initializer}
    for ta, tb, tc in zip(a.graph.initializer, b.graph.initializer, c.graph.initializer, strict=True):
        wa, wb, wc = (numpy_helper.to_array(t) for t in (ta, tb, tc))
        np.testing.assert_array_equal(wa, wb)
        if ta.name in names and orig[ta.name].size > 8:
            assert not np.array_equal(wa, wc) and not np.array_equal(wa, orig[ta.name])
            assert wa.std() == pytest.approx(orig[ta.name].std(), rel=0.35)
