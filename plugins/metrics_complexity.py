"""Complexity metrics: how concentrated a map is (definitions as Quantus 0.6), over the full
attribution (every channel), 2D or 3D alike."""

from __future__ import annotations

import numpy as np

from nxrt.evaluation import Metric, prepared
from nxrt.params import Param

ABS = Param("abs", bool, True, "take |a| (after normalising)")
NORMALISE = Param("normalise", bool, True, "divide the map by its largest |value| first")


class Sparseness(Metric):
    """Gini index of the map's values (Chalasani et al. 2020; Quantus `Sparseness`): 0 when every
    voxel holds the same relevance, towards 1 when one voxel holds it all. As Quantus, 1e-7 is
    added to every value first (so that an all-zero map is defined: 0)."""

    name = "sparseness"
    family = "complexity"
    summary = "Gini index of the map (higher: more concentrated)"
    parameters = (ABS, NORMALISE)

    def score(self, ctx, a, mask, abs, normalise):
        v = np.sort(prepared(a, abs, normalise).ravel() + 1e-7)
        n = v.size
        weights = 2 * np.arange(1, n + 1) - n - 1
        return {self.name: float((weights * v).sum() / (n * v.sum()))}


class Complexity(Metric):
    """Shannon entropy of the map's share of relevance per voxel (Bhatt et al. 2020; Quantus
    `Complexity`): log(n) when spread evenly, 0 when on one voxel. NaN for an all-zero map."""

    name = "complexity"
    family = "complexity"
    summary = "entropy of the map's relevance distribution (lower: simpler)"
    parameters = (ABS, NORMALISE)

    def score(self, ctx, a, mask, abs, normalise):
        v = prepared(a, abs, normalise).ravel()
        total = np.abs(v).sum()
        if total == 0:
            return {self.name: float("nan")}
        p = v / total
        return {self.name: float(-(p * np.log(p + 1e-12)).sum())}
