"""Whole torch networks, through both torch exporters: nxrt's gradient vs torch autograd in float64,
on each backend (onnxruntime's CPU provider and OpenVINO).

Criterion (issue 2): ||nxrt - ref64|| / ||ref64|| <= max(1e-4, 2 x torch's own float32 error),
where ref64 is torch autograd on the same model cast to float64. Deep normalised 3D nets are
float32-limited; plain conv nets are held to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.nets import (
    BACKENDS,
    export_torch,
    monai_nets,
    nnunet_nets,
    nxrt_grads,
    resnet2d,
    small_cnn2d,
    torch_input_grad,
    transformer_nets,
)
from tests.oracles import rel_err


def check_parity(module, xs, path, dynamo, task, target, dynamic_batch=False, kinks_everywhere=False):
    """Errors per input draw, for each backend; the criterion holds for the median draw.

    ReLU networks have gradient discontinuities: a float32 forward (torch's, onnxruntime's or
    OpenVINO's) can land on the other side of a kink and flip one mask. Measured on SegResNet: moving
    the input by 1e-6 (relative) changes the float64 gradient itself by 3e-3, and one unlucky draw
    out of six gave 9.6e-3 for onnxruntime while torch float32 stayed at 7.8e-5 (the others: nxrt
    7.7e-5 vs torch 7.9e-5). The median of three draws is robust to one such flip and still fails
    for any systematic error.
    """
    export_torch(module, torch.tensor(xs[0]), path, dynamo=dynamo, dynamic_batch=dynamic_batch)
    errs, errs32 = {b: [] for b in BACKENDS}, []
    for x in xs:
        ref64 = torch_input_grad(module, x, target, task, torch.float64)
        ref32 = torch_input_grad(module, x, target, task, torch.float32)
        errs32.append(rel_err(ref32, ref64))
        for backend in BACKENDS:
            got = nxrt_grads(str(path), x, target, task, provider=backend)["input_grad"]
            assert got.shape == x.shape
            errs[backend].append(rel_err(got, ref64))
    err32 = float(np.median(errs32))
    # kinks_everywhere: a network whose pooled score meets a LeakyReLU at full resolution (SwinUNETR's
    # last decoder block, 12 x 64^3 voxels, the gradient there uniform in magnitude): one flipped mask
    # of 3.1M costs ~1/sqrt(3.1M) = 6e-4 of relative L2 error, and float32 flips a few in most draws
    # (measured: nxrt 3 flips in draw 1, all at |x| < 5e-7; torch's own float32 1.5e-3 in one draw
    # of three). There the bound is twice torch float32's worst draw: what one flip costs.
    bound = max(1e-4, 2 * (max(errs32) if kinks_everywhere else err32))
    print(" ".join(f"{b} err {e}" for b, e in errs.items()) + f"  torch float32 err {errs32}  bound {bound:.2e}")
    for backend, e in errs.items():
        assert float(np.median(e)) <= bound, (backend, errs, errs32)
    return {b: float(np.median(e)) for b, e in errs.items()}, err32


def draws(shape, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["unet", "dynunet", "segresnet", "basicunet"])
def test_monai_segmentation_parity(name, dynamo, tmp_path):
    torch.manual_seed(0)
    module = monai_nets()[name]().eval()
    check_parity(module, draws((1, 4, 32, 32, 32)), tmp_path / "model.onnx", dynamo, "segmentation", target=1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["unetr", "swinunetr"])
def test_monai_transformer_parity(name, dynamo, tmp_path):
    torch.manual_seed(0)
    build, size = transformer_nets()[name]
    module = build().eval()
    check_parity(module, draws((1, 4, size, size, size)), tmp_path / "model.onnx", dynamo, "segmentation", target=1,
                 kinks_everywhere=name == "swinunetr")


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["plainconvunet", "residualencoderunet"])
def test_nnunet_architecture_parity(name, dynamo, tmp_path):
    torch.manual_seed(0)
    module = nnunet_nets()[name]().eval()
    check_parity(module, draws((1, 4, 32, 32, 32)), tmp_path / "model.onnx", dynamo, "segmentation", target=1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_resnet2d_classifier_parity_dynamic_batch(dynamo, tmp_path):
    torch.manual_seed(0)
    module = resnet2d().eval()
    with torch.no_grad():  # non-trivial running statistics, so BatchNorm's inference form matters
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    errs, _ = check_parity(module, draws((2, 3, 64, 64), seed=2), tmp_path / "model.onnx", dynamo,
                           "classification", target=1, dynamic_batch=True)
    assert max(errs.values()) < 1e-4


def test_layer_gradient_matches_torch(tmp_path):
    """d score / d A for an intermediate activation (what Grad-CAM needs)."""
    torch.manual_seed(0)
    module = small_cnn2d().eval()
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    path = export_torch(module, torch.tensor(x), tmp_path / "m.onnx", dynamo=False)
    import onnx

    last_conv = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"][-1]
    got = nxrt_grads(path, x, 2, "classification", layers=[last_conv.name])
    layer = last_conv.output[0]
    acts = {}
    module64 = module.double()

    def keep(mod, inputs, output):  # returns None, so the output is left as it is
        output.retain_grad()
        acts["a"] = output

    module64[5].register_forward_hook(keep)
    module64(torch.tensor(x, dtype=torch.float64))[:, 2].sum().backward()
    assert rel_err(got[layer], acts["a"].detach().numpy()) < 1e-5
    assert rel_err(got[f"nxrt_grad__{layer}"], acts["a"].grad.numpy()) < 1e-4


def test_guided_mode_matches_captum_guided_backprop(tmp_path):
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    module = small_cnn2d().eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    path = export_torch(module, torch.tensor(x), tmp_path / "m.onnx", dynamo=True)
    got = nxrt_grads(path, x, 0, "classification", guided=True)["input_grad"]
    want = GuidedBackprop(module).attribute(torch.tensor(x), target=0).detach().numpy()
    assert rel_err(got, want) < 1e-4
    plain = nxrt_grads(path, x, 0, "classification")["input_grad"]
    assert rel_err(plain, want) > 0.1  # guided really differs from the plain gradient here
