"""`Explanation`: what `Explainer.explain` returns — the attribution and everything about how it
was made, as plain values (no state is left behind on the Explainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Explanation(np.lib.mixins.NDArrayOperatorsMixin):
    """The result of one `Explainer.explain` call.

    attribution: float32, raw and signed, shaped like x (CAM methods: channel axis of size 1).
    method: the canonical method name; params: every parameter's value as used (defaults filled).
    targets: per sample, the score indices that were explained (summed).
    output, scores: the model's output and [N, K] scores at x, when a pass of the call evaluated
    the model there (every gradient method but IG and SmoothGrad, the CAM methods, occlusion, and
    a classifier's target resolution do); else None. No extra pass is ever run for them.
    extras: method-specific values (Grad-CAM's `layer`, the layer sweep's `layers`, IG's `delta`).
    seconds: wall time of the call; build_seconds: the part spent building graphs and sessions.
    warnings: what the result cannot be trusted for, one line each (e.g. gradient paths through
    piecewise-constant ops, an IG whose attributions miss F(x) - F(x') by more than 5%).

    It works where an array is expected: np.asarray(e), e.shape, e[0], and arithmetic and numpy
    functions (e * 2, e1 - e2, np.abs(e)) give plain arrays of the attribution.
    """

    attribution: np.ndarray
    method: str
    params: dict[str, Any]
    targets: list[list[int]]
    output: np.ndarray | None = None
    scores: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    build_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def __array__(self, dtype=None, copy=None):
        a = self.attribution if dtype is None else self.attribution.astype(dtype, copy=False)
        return a.copy() if copy else a

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(i.attribution if isinstance(i, Explanation) else i for i in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.attribution.shape

    @property
    def dtype(self) -> np.dtype:
        return self.attribution.dtype

    @property
    def ndim(self) -> int:
        return self.attribution.ndim

    def __len__(self) -> int:
        return len(self.attribution)

    def __getitem__(self, key):
        return self.attribution[key]

    @property
    def layer(self) -> str | None:
        """The layer a CAM method used (extras['layer']), else None."""
        return self.extras.get("layer")


def merge_extras(per_sample: list[dict[str, Any]]) -> dict[str, Any]:
    """One extras dict for a batch explained sample by sample: arrays are joined along the batch
    axis, values equal for every sample are kept once, others become a per-sample list."""
    if len(per_sample) == 1:
        return dict(per_sample[0])
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for extras in per_sample for k in extras):
        values = [extras.get(key) for extras in per_sample]
        if all(isinstance(v, np.ndarray) and v.ndim for v in values):
            out[key] = np.concatenate(values, axis=0)
        elif all(_equal(v, values[0]) for v in values):
            out[key] = values[0]
        else:
            out[key] = values
    return out


def _equal(a, b) -> bool:
    try:
        return bool(np.all(a == b)) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else a == b
    except Exception:
        return False
