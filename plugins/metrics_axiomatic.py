"""Axiomatic metrics: properties a map of a given kind must have by construction."""

from __future__ import annotations

import numpy as np

from nxrt.evaluation import Metric
from nxrt.params import Param


class Completeness(Metric):
    """Completeness (Sundararajan et al. 2017): an integrated-gradients map sums to the score
    change from its baseline to the input, sum(a) = F(x) - F(x'). The value is the relative error
    |sum(a) - (F(x) - F(x'))| / |F(x) - F(x')| (0 for an exact IG; NaN when F(x) = F(x')), with
    `completeness_sum` and `completeness_change` beside it. The baseline x' is the method's own
    `baseline` parameter when it has one (IG, guided IG), else `perturb_baseline`. (Quantus 0.6's
    Completeness returns only whether the two are equal, which a float32 IG never is exactly.)"""

    name = "completeness"
    family = "axiomatic"
    summary = "relative error of sum(a) against F(x) - F(baseline) (IG: near 0)"
    needs = ("model",)
    parameters = (Param("perturb_baseline", "array", 0.0, "the baseline when the method has none: a number or "
                        "an array shaped like x"),)

    def score(self, ctx, a, mask, perturb_baseline):
        x = ctx.x
        b = ctx.method_params.get("baseline", perturb_baseline) if ctx.method else perturb_baseline
        base = np.broadcast_to(np.asarray(b, np.float32), x.shape)
        f = ctx.scores(np.concatenate([x, base], axis=0))
        change = float(f[0] - f[1])
        total = float(np.sum(a, dtype=np.float64))
        value = abs(total - change) / abs(change) if change != 0 else float("nan")
        return {self.name: value, f"{self.name}_sum": total, f"{self.name}_change": change}
