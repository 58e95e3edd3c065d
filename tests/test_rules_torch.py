"""Rules against torch autograd of the same op, where finite differences are undefined (ties)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from tests.oracles import make_model, nxrt_vjp


@pytest.mark.parametrize("maxpool", ["indices", "equality"])
def test_maxpool_ties_route_to_the_first_maximum_like_torch(maxpool):
    # integer-valued input: overlapping windows full of ties; finite differences are undefined here
    x = np.random.default_rng(0).integers(0, 3, (2, 3, 9, 9)).astype(np.float32)
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1])], {"x": x}, "y")
    seed = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    got = nxrt_vjp(model, {"x": x}, ["x"], seed, maxpool=maxpool)["x"]
    xt = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.max_pool2d(xt, 3, 2, padding=1) * torch.tensor(seed)).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert np.isclose(got.sum(), seed.sum(), rtol=1e-5)  # every window's gradient lands exactly once


def test_global_max_ties_split_evenly_like_amax():
    x = np.zeros((1, 2, 3, 3), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = 5.0
    x[0, 1] = 1.0
    model = make_model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {"x": x}, "y")
    seed = np.array([2.0, 3.0], np.float32).reshape(1, 2, 1, 1)
    got = nxrt_vjp(model, {"x": x}, ["x"], seed)["x"]
    xt = torch.tensor(x, requires_grad=True)
    (torch.amax(xt, dim=(2, 3), keepdim=True) * torch.tensor(seed)).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6)


def test_guided_relu_rule_is_relu_of_gradient_times_mask():
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, "y")
    seed = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
    got = nxrt_vjp(model, {"x": x}, ["x"], seed, guided=True)["x"]
    np.testing.assert_allclose(got, np.maximum(seed, 0) * (x > 0), rtol=1e-7)
