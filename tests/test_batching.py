"""Automatic batch size and batch-size independence of every batched method."""

from __future__ import annotations

import numpy as np
import pytest

import nxrt
from nxrt.engine import activation_bytes_per_sample, auto_batch_size
from tests.test_augment import tiny_classifier


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
