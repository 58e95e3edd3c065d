"""Robustness metrics: how much the map changes when the input is slightly perturbed (definitions as
Quantus 0.6 `MaxSensitivity` / `AvgSensitivity`, i.e. Yeh et al. 2019, Captum `sensitivity_max`).

For each of `nr_samples` perturbations x + u (u uniform in [-lower_bound, lower_bound], or in
[lower_bound, upper_bound] when that is given; drawn from the evaluation's seeded generator, one
array shaped like x per perturbation, in order) the method explains x + u again with its own
parameters (a gradient batch of copies at a time where the method takes stacks) and the
sensitivity is ||a(x+u) - a(x)|| / ||a(x)|| (Frobenius norms over every element). max_sensitivity
is their maximum, avg_sensitivity their mean. return_nan_when_prediction_changes: a perturbation
that changes the predicted class (classification) counts as NaN and is skipped by the maximum/mean
(as Quantus' nanmax/nanmean), unless every one does.
"""

from __future__ import annotations

import numpy as np

from nxrt.evaluation import Metric, prepared
from nxrt.params import Param

PARAMETERS = (Param("nr_samples", int, 200, "perturbed copies explained again", minimum=1),
              Param("lower_bound", float, 0.2, "noise bound: u in [-lower_bound, lower_bound]", minimum=0),
              Param("upper_bound", float, None, "when given, u in [lower_bound, upper_bound]"),
              Param("abs", bool, False, "compare |a| (after normalising)"),
              Param("normalise", bool, False, "divide each map by its largest |value| first"),
              Param("return_nan_when_prediction_changes", bool, False,
                    "ignore perturbations that change the predicted class"))


def sensitivities(ctx, a, nr_samples, lower_bound, upper_bound, abs, normalise,
                  return_nan_when_prediction_changes) -> np.ndarray:
    x = ctx.x
    lo, hi = (-lower_bound, lower_bound) if upper_bound is None else (lower_bound, upper_bound)
    noisy = np.concatenate([x + ctx.rng.uniform(lo, hi, size=x.shape).astype(np.float32)
                            for _ in range(nr_samples)], axis=0)
    again = ctx.explain_many(noisy)
    ref = prepared(a, abs, normalise).ravel()
    norm = np.linalg.norm(ref)
    out = np.array([np.linalg.norm(prepared(again[k:k + 1], abs, normalise).ravel() - ref) for k in range(nr_samples)])
    out = out / norm if norm > 0 else np.full(nr_samples, np.nan)
    if return_nan_when_prediction_changes and ctx.explainer.task == "classification":
        before = int(np.argmax(ctx.context.forward(x)[0]))
        after = np.argmax(ctx.context.forward(noisy), axis=1)
        out[after != before] = np.nan
    return out


class _Sensitivity(Metric):
    family = "robustness"
    needs = ("model", "method")
    parameters = PARAMETERS
    default = False  # nr_samples explanations: asked for, not run by default
    reduce = staticmethod(np.nanmax)

    def score(self, ctx, a, mask, **params):
        s = sensitivities(ctx, a, **params)
        return {self.name: float(self.reduce(s)) if np.isfinite(s).any() else float("nan")}


class MaxSensitivity(_Sensitivity):
    """The largest relative change of the map over the perturbations (see the module docstring)."""

    name = "max_sensitivity"
    summary = "largest relative change of the map under small input noise (lower is better)"
    reduce = staticmethod(np.nanmax)


class AvgSensitivity(_Sensitivity):
    """The mean relative change of the map over the perturbations (see the module docstring)."""

    name = "avg_sensitivity"
    summary = "mean relative change of the map under small input noise (lower is better)"
    reduce = staticmethod(np.nanmean)
