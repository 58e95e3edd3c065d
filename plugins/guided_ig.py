"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021): integrated gradients along an adaptive path."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.params import Param
from nxrt.registry import Method

#: relative and absolute tolerance on "the L1 distance left equals this step's target"
_TOL = 1e-9


def _baseline_like(baseline, x: np.ndarray) -> np.ndarray:
    """A scalar, or an array shaped like x or like one sample of x, as a float64 array shaped like x.

    The values are rounded to float32 first, as the model would see them; then, for a float32 x, the
    straight-line end point baseline + (x - baseline) * 1.0 is exactly x in float64."""
    b = np.asarray(baseline, dtype=np.float32).astype(np.float64)
    if b.ndim == x.ndim - 1:
        b = b[None]
    try:
        return np.broadcast_to(b, x.shape).copy()
    except ValueError:
        raise InputError(f"baseline of shape {b.shape} does not broadcast to the input {x.shape}") from None


class GuidedIG(Method):
    """Guided IG (Kapishnikov et al., CVPR 2021) attributes the score to the input by summing gradient x
    displacement along an adaptive path from the baseline to x rather than the straight line: each of `steps`
    steps cuts the L1 distance left to x by 1/steps of the total, covering it by repeatedly moving the
    movable features with the smallest |gradient| (those whose change affects the score least, so noisy
    high-gradient features are crossed late, once their gradient has settled); the cut-off is the `fraction`
    quantile of |gradient| over all features. `max_dist` keeps each feature within +-max_dist of its
    straight-line progress (0: plain IG, left Riemann sum; 1: unbounded path). `baseline` is a scalar or an
    array shaped like x or like one sample. The attributions sum to F(x) - F(baseline) only up to a Riemann
    error that grows as the path bends (raise `steps`). Steps are inherently sequential, since each step's
    path depends on the gradient at the point the previous one reached, so the method makes `steps`
    session calls of one sample each and gains nothing from the batch size. Reference: PAIR saliency
    0.2.1 `saliency.core.GuidedIG().GetMask`, reproduced including its quantile and tie rules.
    """

    name = "guided_ig"
    aliases = ("gig",)
    summary = "integrated gradients along an adaptive path that moves low-gradient features first (less noise)"
    parameters = (
        Param("steps", int, 200, "steps along the path (sequential: one gradient each)", minimum=1),
        Param("fraction", float, 0.25, "share of features moved per sub-step", minimum=0, maximum=1),
        Param("max_dist", float, 0.02, "corridor around the straight line (0: IG, 1: unbounded)", minimum=0,
              maximum=1),
        Param("baseline", "array", 0.0, "the path's start: a number or an array shaped like x or one sample"),
    )

    def explain(self, ctx, x: np.ndarray, target, steps: int, fraction: float, max_dist: float,
                baseline) -> np.ndarray:
        # The path bookkeeping runs in float64: "has this feature reached its ceiling" is an exact equality
        # test and the L1 schedule is compared with a 1e-9 tolerance, both too tight for float32.
        end = np.asarray(x, dtype=np.float64)
        start = _baseline_like(baseline, end)
        span = end - start
        total = float(np.abs(span).sum())
        attr = np.zeros_like(end)
        if total == 0.0:  # input equals baseline: no path, no attribution
            return attr.astype(np.float32)

        # Flat views; the per-step arrays are made once per step, not once per sub-step (at 128^3 x 4
        # every full-array pass costs ~20-40 ms, and a step takes a few sub-steps).
        shape = end.shape
        end, start, span, attr = end.ravel(), start.ravel(), span.ravel(), attr.ravel()
        n = end.size
        rank = int(np.floor(fraction * (n - 1)))  # numpy's quantile(method="lower") picks this order statistic
        point = start.copy()
        for i in range(steps):
            # Left Riemann sum: the gradient at the point where this step begins weights the whole step.
            grad32 = np.asarray(ctx.gradient(point.astype(np.float32).reshape(shape), target), np.float32).ravel()
            alpha = (i + 1) / steps
            # Every feature must end this step between `floor` and `ceil`: its straight-line position at
            # alpha, give or take max_dist (as a share of its own baseline-to-input span).
            floor = start + span * max(alpha - max_dist, 0.0)
            ceil = start + span * min(alpha + max_dist, 1.0)
            goal = total * (1.0 - alpha)  # L1 distance to x that must remain after this step
            begin = point.copy()
            # Features left behind the corridor are pulled up to its lower edge first (features with no
            # span sit on both edges and are never behind). Moves only go up within a step, so once is enough.
            behind = (floor - point) * span > 0
            point[behind] = floor[behind]
            # The L1 distance left: every later move of this step goes toward x and shortens it by its length.
            distance = float(np.abs(end - point).sum())
            # Rank features by |gradient| (float32 values, exactly as the gradient came); those at the
            # ceiling cannot move this step, so they rank last (inf).
            key = np.abs(grad32)
            key[point == ceil] = np.inf
            while True:
                gap = distance - goal
                if gap <= _TOL * max(goal, gap + goal, 1.0):
                    break  # schedule met (a negative gap only arises if the pull-up alone overshot it)
                # The cut-off is the lower `fraction` quantile over ALL features (the excluded ones
                # included, as the reference does), and every feature tied with it is moved too.
                cut = np.partition(key, rank)[rank]
                chosen = np.flatnonzero(key <= cut) if cut < np.inf else np.flatnonzero(key < np.inf)
                left = ceil[chosen] - point[chosen]
                room = float(np.abs(left).sum())
                if room <= 0.0:
                    break  # nothing can move any more; only float rounding can leave a gap here
                if gap > room:
                    # The chosen features cannot close the gap: move them all the way and choose again.
                    point[chosen] = ceil[chosen]
                    key[chosen] = np.inf
                    distance -= room
                else:
                    # Move each chosen feature the same share of its remaining room; that closes the gap.
                    point[chosen] += left * (gap / room)
                    break
            attr += (point - begin) * grad32
            ctx.report(i + 1, steps, "steps")
        attr = attr.reshape(shape)
        return attr.astype(np.float32)
