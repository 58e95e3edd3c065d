"""Integrated gradients (Sundararajan et al. 2017)."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.registry import Method

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
    F(x) - F(x') up to the quadrature error. Reference: Captum IntegratedGradients (same rule/steps).
    """

    name = "integrated_gradients"
    aliases = ("ig",)
    summary = "path integral of gradients from a baseline (0 = black) to the input; sums to the score change"
    defaults = {"steps": 50, "rule": "gausslegendre", "baseline": 0.0}

    def explain(self, ctx, x, target, steps, rule, baseline):
        alphas, weights = quadrature(rule, steps)
        base = as_baseline(baseline, x)
        delta = x - base
        total = np.zeros(x.shape, np.float64)
        # stack as many path points per session call as the batch size allows
        per_call = max(1, ctx.batch_size)
        for i in range(0, len(alphas), per_call):
            a = alphas[i:i + per_call].astype(np.float32)
            points = base + a.reshape((-1,) + (1,) * (x.ndim - 1)) * delta
            grads = ctx.gradient(points, target)
            total += np.tensordot(weights[i:i + per_call], grads, axes=(0, 0))[None]
        return (delta * total).astype(np.float32)
