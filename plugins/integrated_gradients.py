"""Integrated gradients (Sundararajan et al. 2017)."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.params import Param
from nxrt.registry import Method, MethodResult

#: the completeness error above which a result warns (|delta| / |F(x) - F(x')|)
TOLERANCE = 0.05
RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of the path integral over [0, 1], defined exactly as Captum defines them
    (so results are comparable): Gauss-Legendre nodes, or Riemann sums with step 1/n (the
    trapezoid rule halves the first and last weight and places nodes at linspace(0, 1, n))."""
    if rule not in RULES:
        raise InputError(f"rule '{rule}' is not one of {', '.join(RULES)}")
    if not isinstance(steps, int | np.integer) or steps < (1 if rule == "gausslegendre" else 2):
        raise InputError(f"steps must be an integer >= {1 if rule == 'gausslegendre' else 2}, got {steps!r}")
    n = int(steps)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    weights = np.full(n, 1.0 / n)
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return np.linspace(0, 1, n), weights
    start = {"riemann_left": 0.0, "riemann_middle": 0.5 / n, "riemann_right": 1.0 / n}[rule]
    return start + np.arange(n) / n, weights


def as_baseline(baseline, x: np.ndarray) -> np.ndarray:
    """A scalar, or an array shaped like x or like one sample of x, broadcast to x."""
    b = np.asarray(baseline, dtype=np.float32)
    if b.ndim == x.ndim - 1:
        b = b[None]
    try:
        return np.broadcast_to(b, x.shape).astype(np.float32)
    except ValueError:
        raise InputError(f"baseline of shape {b.shape} does not broadcast to the input {x.shape}") from None


class IntegratedGradients(Method):
    """(x - x') * integral of d score / d x along the straight path from the baseline x' to x.

    Path points are evaluated in chunks of the batch size. Completeness: the attributions sum to
    F(x) - F(x') up to the quadrature error, which `delta=True` (the default) measures per sample:
    `Explanation.extras["delta"]` = sum(attribution) - (F(x) - F(x')) (Captum's convergence delta)
    and `extras["delta_relative"]` = |delta| / |F(x) - F(x')|, with a warning when that exceeds
    5% (raise `steps`). It costs one forward pass at x and x'. Reference: Captum
    IntegratedGradients (same rule and steps).
    """

    name = "integrated_gradients"
    aliases = ("ig",)
    summary = "path integral of gradients from a baseline (0 = black) to the input; sums to the score change"
    parameters = (
        Param("steps", int, 50, "points on the path (riemann rules: at least 2)", minimum=1),
        Param("rule", str, "gausslegendre", "quadrature rule", choices=RULES),
        Param("baseline", "array", 0.0, "the path's start x': a number or an array shaped like x or one sample"),
        Param("delta", bool, True, "report the completeness error, warn above 5% (one more forward pass)"),
    )

    def explain(self, ctx, x, target, steps, rule, baseline, delta):
        alphas, weights = quadrature(rule, steps)
        base = as_baseline(baseline, x)
        span = x - base
        total = np.zeros(x.shape, np.float64)

        def path_points(chunk: slice) -> np.ndarray:
            a = alphas[chunk].astype(np.float32)
            return base + a.reshape((-1,) + (1,) * (x.ndim - 1)) * span

        points = ctx.batched(len(alphas), path_points, lambda xs: ctx.gradient(xs, target), unit="path points")
        for chunk, grads in points:
            total += np.tensordot(weights[chunk], grads, axes=(0, 0))[None]
        attribution = (span * total).astype(np.float32)
        if not delta:
            return attribution
        ends = ctx.forward(np.concatenate([x, base], axis=0))[:, target].sum(axis=1).astype(np.float64)
        change = ends[:len(x)] - ends[len(x):]
        gap = attribution.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - change
        relative = np.abs(gap) / np.maximum(np.abs(change), 1e-30)
        # below float32's resolution of the scores the gap is rounding, not quadrature error
        noise = 1e-6 * (np.abs(ends[:len(x)]) + np.abs(ends[len(x):]))
        warnings = [f"the attributions sum to {change[i] + gap[i]:.4g} but F(x) - F(baseline) = {change[i]:.4g} "
                    f"({relative[i]:.0%} off, above 5%): raise steps (now {steps}), e.g. -p ig.steps={4 * steps}"
                    for i in range(len(x)) if relative[i] > TOLERANCE and abs(gap[i]) > noise[i]]
        return MethodResult(attribution, {"delta": gap, "delta_relative": relative}, warnings[:1])
