"""Statistics the metrics share, in numpy alone (no scipy or scikit-image at run time): average
ranks, Spearman's correlation, and SSIM on 1D, 2D or 3D maps."""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` (flattened), tied values sharing their mean rank."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays of one size (Pearson's of their average ranks,
    as scipy.stats.spearmanr); NaN when either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _box_mean(v: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w-long window along each axis (the 'valid' part: each axis shrinks by w-1)."""
    for axis in range(v.ndim):
        c = np.cumsum(v, axis=axis, dtype=np.float64)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = v.shape[axis]
        v = (np.take(c, np.arange(w, n + 1), axis=axis) - np.take(c, np.arange(0, n - w + 1), axis=axis)) / w
    return v


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7, data_range: float | None = None) -> float:
    """Mean structural similarity of two maps of one shape, any dimension (Wang et al. 2004), as
    scikit-image's `structural_similarity` computes it by default: a uniform win_size window (odd;
    reduced to the smallest axis), sample covariances, K1 = 0.01, K2 = 0.03, the mean over the
    windows that fit wholly. data_range: default the range of both maps together (as Quantus)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = min(win_size, *a.shape)
    w -= 1 - w % 2  # odd
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    if w < 1 or data_range == 0:
        return float("nan")
    n = w ** a.ndim
    cov = n / (n - 1) if n > 1 else 1.0
    ux, uy = _box_mean(a, w), _box_mean(b, w)
    vx = cov * (_box_mean(a * a, w) - ux * ux)
    vy = cov * (_box_mean(b * b, w) - uy * uy)
    vxy = cov * (_box_mean(a * b, w) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values`: the histogram bin centre that maximises the between-class
    variance (values above it are the foreground)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    w0 = np.cumsum(counts)
    w1 = np.cumsum(counts[::-1])[::-1]
    m0 = np.cumsum(counts * centres) / np.maximum(w0, 1e-300)
    m1 = (np.cumsum((counts * centres)[::-1]) / np.maximum(w1[::-1], 1e-300))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centres[:-1][int(np.argmax(between))])
