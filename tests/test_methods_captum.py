"""The NeuroXAI methods on torch models (channels-first) against Captum 0.9.

2D classification and 3D segmentation (pooled score: Captum explains a wrapper that returns the
spatial mean of each output channel, which is exactly nxrt's pooling head).
"""

from __future__ import annotations

import captum.attr as captum_attr
import numpy as np
import pytest
import torch

import nxrt
from tests.nets import export_torch, small_cnn2d
from tests.oracles import rel_err

nn = torch.nn


def seg_net3d():
    return nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Conv3d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.Upsample(scale_factor=2, mode="trilinear"),
                         nn.Conv3d(8, 3, 1))


class Pooled(nn.Module):
    """What nxrt's segmentation head computes: the spatial mean of each output channel."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return y.mean(dim=tuple(range(2, y.dim())))


@pytest.fixture(scope="module")
def cls2d(tmp_path_factory):
    torch.manual_seed(0)
    net = small_cnn2d().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    path = export_torch(net, torch.tensor(x), tmp_path_factory.mktemp("m") / "cls.onnx", dynamo=False)
    return net, net, x, nxrt.Explainer(path, batch_size=8), net[5]


@pytest.fixture(scope="module")
def seg3d(tmp_path_factory):
    torch.manual_seed(1)
    net = seg_net3d().eval()
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8, 8)).astype(np.float32)
    path = export_torch(net, torch.tensor(x), tmp_path_factory.mktemp("m") / "seg.onnx", dynamo=False)
    ex = nxrt.Explainer(path, task="segmentation", batch_size=8)
    return Pooled(net).eval(), net, x, ex, net[3]


CASES = ["cls2d", "seg3d"]


def _t(x):
    return torch.tensor(x)


@pytest.mark.parametrize("case", CASES)
def test_vanilla_matches_saliency(case, request):
    model, _, x, ex, _ = request.getfixturevalue(case)
    want = captum_attr.Saliency(model).attribute(_t(x), target=1, abs=False).detach().numpy()
    got = ex.explain(x, "vg", target=1)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_guided_backprop(case, request):
    model, _, x, ex, _ = request.getfixturevalue(case)
    want = captum_attr.GuidedBackprop(model).attribute(_t(x), target=2).detach().numpy()
    assert rel_err(ex.explain(x, "guided_backprop", target=2), want) < 1e-4


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                  "riemann_trapezoid"])
@pytest.mark.parametrize("case", CASES)
def test_integrated_gradients(case, rule, request):
    model, _, x, ex, _ = request.getfixturevalue(case)
    base = np.full(x.shape, 0.1, np.float32)
    want = captum_attr.IntegratedGradients(model).attribute(_t(x), baselines=_t(base), target=1, n_steps=20,
                                                            method=rule).detach().numpy()
    got = ex.explain(x, "ig", target=1, steps=20, rule=rule, baseline=0.1)
    assert rel_err(got, want) < 1e-3


@pytest.mark.parametrize("case", CASES)
def test_integrated_gradients_completeness(case, request):
    _, _, x, ex, _ = request.getfixturevalue(case)
    attr = ex.explain(x[:1], "ig", target=0, steps=128).attribution
    scores = ex.scores(np.concatenate([x[:1], np.zeros_like(x[:1])]))
    delta = scores[0, 0] - scores[1, 0]
    assert abs(attr.sum() - delta) <= 0.05 * abs(delta)


@pytest.mark.parametrize("case", CASES)
def test_integrated_gradients_delta_is_captums_convergence_delta(case, request):
    """IG reports sum(attribution) - (F(x) - F(x')) per sample (delta=True, the default), as
    Captum's return_convergence_delta does (same rule, steps and baseline)."""
    model, _, x, ex, _ = request.getfixturevalue(case)
    e = ex.explain(x, "ig", target=1, steps=16, baseline=0.1)
    ig = captum_attr.IntegratedGradients(model)
    _, want = ig.attribute(_t(x), baselines=0.1, target=1, n_steps=16, method="gausslegendre",
                           return_convergence_delta=True)
    assert e.extras["delta"].shape == (len(x),)
    np.testing.assert_allclose(e.extras["delta"], want.detach().numpy(), rtol=0.02, atol=2e-6)
    assert "delta" not in ex.explain(x, "ig", target=1, steps=16, delta=False).extras


def test_integrated_gradients_warns_when_its_sum_misses_the_score_change(cls2d):
    """Two right-Riemann steps miss F(x) - F(0) by far more than 5%: the result says so, with the
    numbers (checked against the model's own scores at x and at the baseline) and the fix."""
    _, _, x, ex, _ = cls2d
    with pytest.warns(nxrt.NxrtWarning, match="raise steps"):
        e = ex.explain(x[:1], "ig", target=1, steps=2, rule="riemann_right")
    scores = ex.scores(np.concatenate([x[:1], np.zeros_like(x[:1])]))
    change = scores[0, 1] - scores[1, 1]
    gap = float(e.attribution.sum(dtype=np.float64) - change)
    assert abs(gap) > 0.05 * abs(change)
    np.testing.assert_allclose(e.extras["delta"][0], gap, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(e.extras["delta_relative"][0], abs(gap) / abs(change), rtol=1e-4)
    (line,) = e.warnings
    assert f"F(x) - F(baseline) = {change:.4g}" in line and "-p ig.steps=8" in line
    assert not ex.explain(x[:1], "ig", target=1, steps=128).warnings  # converged: nothing to say


@pytest.mark.parametrize("interpolation, mode", [("linear", None), ("nearest", "nearest")])
@pytest.mark.parametrize("case", CASES)
def test_gradcam(case, interpolation, mode, request):
    model, net, x, ex, layer = request.getfixturevalue(case)
    mode = mode or ("bilinear" if x.ndim == 4 else "trilinear")
    cam = captum_attr.LayerGradCam(model, layer).attribute(_t(x), target=1, relu_attributions=True)
    want = captum_attr.LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode=mode).detach().numpy()
    got = ex.explain(x, "gradcam", target=1, layer=_onnx_layer(ex, case), interpolation=interpolation)
    assert got.shape == (x.shape[0], 1) + x.shape[2:]
    assert rel_err(got, want) < 1e-3


@pytest.mark.parametrize("case", CASES)
def test_guided_gradcam(case, request):
    model, net, x, ex, layer = request.getfixturevalue(case)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    want = captum_attr.GuidedGradCam(model, layer).attribute(_t(x), target=0, interpolate_mode=mode).detach().numpy()
    got = ex.explain(x, "guided_gradcam", target=0, layer=_onnx_layer(ex, case))
    assert rel_err(got, want) < 1e-3


@pytest.mark.parametrize("case", CASES)
def test_smoothgrad_limit_is_the_base_method(case, request):
    model, _, x, ex, _ = request.getfixturevalue(case)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    want = nt.attribute(_t(x), nt_type="smoothgrad", nt_samples=4, stdevs=1e-7, target=1, abs=False).detach().numpy()
    got = ex.explain(x, "sg", target=1, samples=4, noise=1e-9)
    assert rel_err(got, want) < 1e-3
    assert rel_err(got, ex.explain(x, "vanilla", target=1)) < 1e-3


def test_smoothgrad_kinds_and_seed(cls2d):
    _, _, x, ex, _ = cls2d
    a = ex.explain(x[:1], "sg", target=1, samples=8, seed=3).attribution
    b = ex.explain(x[:1], "sg", target=1, samples=8, seed=3)
    c = ex.explain(x[:1], "sg", target=1, samples=8, seed=4)
    np.testing.assert_array_equal(a, b)
    assert rel_err(a, c) > 1e-3
    sq = ex.explain(x[:1], "sg", target=1, samples=8, seed=3, kind="squared")
    var = ex.explain(x[:1], "sg", target=1, samples=8, seed=3, kind="vargrad")
    np.testing.assert_allclose(var, sq - a.astype(np.float64) ** 2, rtol=1e-4, atol=1e-10)
    ig_sg = ex.explain(x[:1], "sg", target=1, samples=2, seed=3, base="ig", base_params={"steps": 8})
    assert ig_sg.shape == x[:1].shape


def test_gradient_x_input_and_occlusion(cls2d):
    model, _, x, ex, _ = cls2d
    want = captum_attr.InputXGradient(model).attribute(_t(x), target=2).detach().numpy()
    assert rel_err(ex.explain(x, "gradient_x_input", target=2), want) < 1e-4
    occ = captum_attr.Occlusion(model).attribute(_t(x), target=2, sliding_window_shapes=(3, 4, 4),
                                                 strides=(3, 2, 2), baselines=0.0).detach().numpy()
    got = ex.explain(x, "occlusion", target=2, patch=4, stride=2)
    assert rel_err(got, occ) < 1e-4


def test_segmentation_region_predicted_matches_masked_mean(seg3d):
    _, net, x, ex, _ = seg3d
    xt = _t(x).requires_grad_(True)
    y = net(xt)
    labels = y.argmax(dim=1, keepdim=True)
    target = int(torch.bincount(labels.flatten()).argmax())  # a channel that is predicted somewhere
    mask = (labels == target).float().detach()  # held constant
    ((y[:, target:target + 1] * mask).sum() / mask.sum()).backward()
    got = ex.explain(x, "vanilla", target=target, region="predicted")
    assert rel_err(got, xt.grad.numpy()) < 1e-4


def test_segmentation_mask_region_and_list_targets(seg3d):
    _, net, x, ex, _ = seg3d
    region = np.zeros((8, 8, 8), np.float32)
    region[2:6, 1:5, 3:7] = 1
    got = ex.explain(x, "vanilla", target=[1, 2], region=region)
    xt = _t(x).requires_grad_(True)
    y = net(xt)
    m = _t(region)
    ((y[:, 1] * m).sum() / m.sum() + (y[:, 2] * m).sum() / m.sum()).backward()
    assert rel_err(got, xt.grad.numpy()) < 1e-4
    singles = ex.explain(x, "vanilla", target=1, region=region) + ex.explain(x, "vanilla", target=2, region=region)
    assert rel_err(got, singles) < 1e-6


def test_default_targets(cls2d, seg3d):
    model, _, x, ex, _ = cls2d
    pred = model(_t(x)).argmax(dim=1).numpy()
    got = ex.explain(x, "vanilla")
    assert got.targets == [[int(p)] for p in pred]
    for i, p in enumerate(pred):
        assert rel_err(got[i:i + 1], ex.explain(x[i:i + 1], "vanilla", target=int(p))) < 1e-7
    _, _, xs, exs, _ = seg3d
    assert exs.explain(xs, "vanilla").targets == [[1, 2]]  # every foreground channel


def test_layer_sweep_and_activation_maps(cls2d):
    _, _, x, ex, _ = cls2d
    sweep = ex.explain(x[:1], "layer_sweep", target=1)
    layers = sweep.extras["layers"]
    assert sweep.shape == (1, len(layers), 16, 16) and len(layers) == 3
    for i, layer in enumerate(layers):
        np.testing.assert_allclose(sweep[:, i:i + 1], ex.explain(x[:1], "gradcam", target=1, layer=layer),
                                   rtol=1e-5, atol=1e-7)
    acts = ex.explain(x[:1], "activation_maps", target=1, filters=[0, 3])
    assert acts.shape == (1, 2, 16, 16)


def test_one_session_serves_all_methods(cls2d):
    _, _, x, ex, _ = cls2d
    fresh = nxrt.Explainer(ex.model, batch_size=8)
    for method in ("vanilla", "ig", "sg", "gradcam", "gradient_x_input", "occlusion", "gradcam"):
        fresh.explain(x[:1], method, target=0)
    # one input-gradient session (vanilla, IG, SmoothGrad, gradient x input), one layer session
    # (both Grad-CAMs) and one forward session (occlusion), each built once
    assert fresh.stats()["sessions_built"] == fresh.stats()["sessions"] == 3
    assert fresh.stats()["graphs_built"] <= 2  # the two augmented graphs, unless the disk cache had them


def test_gradcam_plus_plus_matches_torch_hooks(cls2d):
    model, net, x, ex, layer = cls2d
    store = {}

    def keep(mod, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = layer.register_forward_hook(keep)
    model(_t(x))[:, 1].sum().backward()
    handle.remove()
    a, g = store["a"].detach().double(), store["a"].grad.double()
    # pytorch-grad-cam's GradCAMPlusPlus weights, written out independently with torch ops
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    weights = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
    want = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).numpy()
    got = ex.explain(x, "gradcam_plus_plus", target=1, layer=_onnx_layer(ex, "cls2d"))
    assert rel_err(got, want) < 1e-4


def _onnx_layer(ex, case):
    # the layer Captum hooks is the last Conv's output in both models (small_cnn2d[5], seg_net3d[3])
    convs = ex.model.conv_layers()
    return convs[-1] if case == "cls2d" else convs[1]
