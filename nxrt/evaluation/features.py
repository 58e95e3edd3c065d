"""Quantitative features of a map (the NeuroXAI paper's second open step): the tumour a map
points at, as a region -> its volume in ml and centroid in world mm, and, with the true tumour,
the errors and the Dice overlap."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .stats import otsu_threshold

RULES = ("otsu", "mass")


def estimated_region(m: np.ndarray, rule: str = "otsu", mass: float = 0.5) -> np.ndarray:
    """The voxels a non-negative map marks: "otsu" -- above Otsu's threshold of its nonzero values;
    "mass" -- the fewest highest voxels that hold `mass` of its total. Empty for a zero map."""
    m = np.asarray(m, np.float64)
    if not np.any(m > 0):
        return np.zeros(m.shape, bool)
    if rule == "otsu":
        values = m[m > 0]
        return m > otsu_threshold(values) if values.min() < values.max() else m > 0
    if rule == "mass":
        if not 0 < mass <= 1:
            raise InputError(f"mass {mass} must lie in (0, 1]")
        flat = m.ravel()
        order = np.argsort(-flat, kind="stable")
        keep = int(np.searchsorted(np.cumsum(flat[order]), mass * flat.sum() * (1 - 1e-12))) + 1
        region = np.zeros(flat.size, bool)
        region[order[:keep]] = True
        return region.reshape(m.shape)
    raise InputError(f"tumour estimate rule '{rule}' is not one of {', '.join(RULES)}")


def region_features(region: np.ndarray, affine: np.ndarray) -> tuple[float, list[float] | None]:
    """(volume in ml, centroid in world mm or None when empty) of a voxel region of an image."""
    affine = np.asarray(affine, np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    count = int(np.count_nonzero(region))
    if count == 0:
        return 0.0, None
    ijk = np.array([idx.mean() for idx in np.nonzero(region)], np.float64)
    return count * voxel_ml, [float(v) for v in (affine @ np.append(ijk, 1.0))[:3]]


def tumour_estimate(m: np.ndarray, affine: np.ndarray, truth: np.ndarray | None = None, rule: str = "otsu",
                    mass: float = 0.5) -> dict:
    """The tumour a map [*spatial] (>= 0, on the image grid of `affine`) marks (`estimated_region`):
    volume_ml and centroid_mm; with `truth` (a mask on the same grid) also the true volume and
    centroid, volume_error_ml (estimate - truth), centroid_error_mm (distance) and dice."""
    region = estimated_region(m, rule, mass)
    volume, centroid = region_features(region, affine)
    out = {"rule": rule if rule == "otsu" else f"mass {mass:g}", "volume_ml": round(volume, 4),
           "centroid_mm": None if centroid is None else [round(v, 3) for v in centroid]}
    if truth is not None:
        truth = np.asarray(truth) != 0
        t_volume, t_centroid = region_features(truth, affine)
        both = int(np.count_nonzero(region & truth))
        total = int(np.count_nonzero(region)) + int(np.count_nonzero(truth))
        out.update({"true_volume_ml": round(t_volume, 4), "true_centroid_mm": None if t_centroid is None else
                    [round(v, 3) for v in t_centroid], "volume_error_ml": round(volume - t_volume, 4),
                    "centroid_error_mm": None if centroid is None or t_centroid is None else
                    round(float(np.linalg.norm(np.subtract(centroid, t_centroid))), 3),
                    "dice": round(2 * both / total, 6) if total else None})
    return out
