"""Localisation metrics: how well a map points at the truth region (definitions as Quantus 0.6).

Each compares the one-channel map (the attribution summed over its channels: `spatial_map`) with
the mask on the model's grid, in 2D or 3D alike; NaN for an empty mask. Parameter names and
defaults are Quantus 0.6's; its per-batch max normalisation is taken per sample (these metrics do
not depend on a positive factor).
"""

from __future__ import annotations

import numpy as np

from nxrt.evaluation import Metric, prepared, spatial_map
from nxrt.evaluation.stats import average_ranks, otsu_threshold
from nxrt.params import Param

ABS = Param("abs", bool, False, "take |a| (after normalising)")
NORMALISE = Param("normalise", bool, True, "divide the map by its largest |value| first")


def _flat(ctx, a, mask, abs: bool, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    return prepared(spatial_map(ctx, a), abs, normalise).ravel(), np.asarray(mask, bool).ravel()


class PointingGame(Metric):
    """1 when a voxel of the map's maximum lies in the mask (any of them, on ties), else 0
    (Zhang et al. 2018; Quantus `PointingGame`). weighted: a hit counts 1 - the mask's share of
    the grid (hits on large masks are easy; Quantus 0.6 cannot compute this one). An empty mask
    gives NaN (Quantus 0.6 means to, but stores the NaN in a boolean array, which makes it 1)."""

    name = "pointing_game"
    family = "localisation"
    summary = "does the map's maximum fall inside the mask"
    needs = ("mask",)
    parameters = (Param("weighted", bool, False, "weight a hit by 1 - the mask's share of the grid"), ABS, NORMALISE)

    def score(self, ctx, a, mask, weighted, abs, normalise):
        m, s = _flat(ctx, a, mask, abs, normalise)
        if not s.any():
            return {self.name: float("nan")}
        hit = float(np.any(s & (m == m.max())))
        if weighted and hit:
            hit = 1.0 - s.sum() / s.size
        return {self.name: hit}


class RelevanceMass(Metric):
    """Share of the map's total (signed) relevance inside the mask (Arras et al. 2022; Quantus
    `RelevanceMassAccuracy`)."""

    name = "relevance_mass"
    family = "localisation"
    summary = "share of the map's relevance inside the mask"
    needs = ("mask",)
    parameters = (ABS, NORMALISE)

    def score(self, ctx, a, mask, abs, normalise):
        m, s = _flat(ctx, a, mask, abs, normalise)
        if not s.any():
            return {self.name: float("nan")}
        return {self.name: float(m[s].sum() / m.sum())}


class RelevanceRank(Metric):
    """Of the K highest-ranked voxels (K = the mask's size), the share inside the mask (Arras et
    al. 2022; Quantus `RelevanceRankAccuracy`). Ties are ranked as numpy's argsort of -a does."""

    name = "relevance_rank"
    family = "localisation"
    summary = "share of the mask-sized top of the map inside the mask"
    needs = ("mask",)
    parameters = (ABS, NORMALISE)

    def score(self, ctx, a, mask, abs, normalise):
        m, s = _flat(ctx, a, mask, abs, normalise)
        k = int(s.sum())
        if k == 0:
            return {self.name: float("nan")}
        top = np.argsort(-m)[:k]
        return {self.name: float(s[top].sum() / k)}


class ROCAUC(Metric):
    """Area under the ROC curve of the map as a voxel classifier of the mask (Fawcett 2006;
    Quantus `AUC`, which calls scikit-learn): computed here from average ranks (Mann-Whitney),
    ties counting one half, which is the same number; NaN without voxels on both sides."""

    name = "auc"
    family = "localisation"
    summary = "ROC AUC of the map against the mask"
    needs = ("mask",)
    parameters = (ABS, NORMALISE)

    def score(self, ctx, a, mask, abs, normalise):
        m, s = _flat(ctx, a, mask, abs, normalise)
        pos, neg = int(s.sum()), int((~s).sum())
        if pos == 0 or neg == 0:
            return {self.name: float("nan")}
        return {self.name: float((average_ranks(m)[s].sum() - pos * (pos + 1) / 2) / (pos * neg))}


class AttributionLocalisation(Metric):
    """Share of the map's (positive) relevance inside the mask (Kohlbrenner et al. 2020; Quantus
    `AttributionLocalisation`); NaN when it exceeds 1 (negative relevance outside). weighted:
    times the mask's share of the grid (Quantus 0.6 divides by the size of `x_batch[2:]`, i.e. of
    the batch's third sample on: nxrt uses the grid, as the paper defines it)."""

    name = "attribution_localisation"
    family = "localisation"
    summary = "share of positive relevance inside the mask"
    needs = ("mask",)
    parameters = (Param("weighted", bool, False, "times the mask's share of the grid"),
                  Param("max_size", float, 1.0, "masks above this share of the grid are warned about", minimum=0),
                  Param("positive_attributions", bool, False, "clip negative relevance to 0 first"),
                  Param("abs", bool, True, "take |a| (after normalising)"), NORMALISE)

    def score(self, ctx, a, mask, weighted, max_size, positive_attributions, abs, normalise):
        m, s = _flat(ctx, a, mask, abs, normalise)
        if positive_attributions:
            m = np.clip(m, 0, None)
        if not s.any():
            return {self.name: float("nan")}
        ratio = m[s].sum() / (m.sum() + 1e-9)
        if ratio > 1:
            return {self.name: float("nan")}
        return {self.name: float(ratio * (s.sum() / s.size) if weighted else ratio)}


class IoUOtsu(Metric):
    """Intersection over union of the mask with the map thresholded by Otsu's method (as M3d-CAM
    reports for 3D): the threshold that best separates the map's values into two classes
    (`otsu_threshold`, a histogram of `bins` bins, as scikit-image's `threshold_otsu`)."""

    name = "iou_otsu"
    family = "localisation"
    summary = "IoU of the Otsu-thresholded map with the mask"
    needs = ("mask",)
    parameters = (Param("abs", bool, True, "take |a| (after normalising)"), NORMALISE,
                  Param("bins", int, 256, "histogram bins of the threshold search", minimum=2))

    def score(self, ctx, a, mask, abs, normalise, bins):
        m, s = _flat(ctx, a, mask, abs, normalise)
        if not s.any() or m.max() == m.min():
            return {self.name: float("nan")}
        region = m > otsu_threshold(m, bins)
        return {self.name: float((region & s).sum() / (region | s).sum())}
