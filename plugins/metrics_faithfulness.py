"""Faithfulness metrics: does removing what the map calls relevant change the model's score?

Every perturbed input is scored through the model's own forward session, a batch of inputs per
call. Patches are boxes of `patch_size` voxels on a grid padded evenly on both sides (as Quantus
0.6 lays its blocks), 2D or 3D; a patch is perturbed in every input channel at once, and ranked
by the sum of the map (summed over its channels) inside it.

- `deletion` / `insertion` (Petsiuk et al. 2018, RISE): patches removed from the input (replaced
  by the baseline), or inserted into the baseline, most relevant first, in `steps` equal shares of
  the patches; the curve is the explained score at each step divided by the unperturbed score, the
  value its area (trapezoid) over the fraction of voxels removed or inserted, in [0, 1]. Deletion:
  lower is better; insertion: higher. deletion_curve starts with the unperturbed input (1);
  insertion_curve with the baseline.
- `region_perturbation` (Samek et al. 2017; Quantus `RegionPerturbation`): `regions_evaluation`
  patches perturbed one after another in `order`; the value is the AOPC, the mean drop of the
  score over the steps; the curve the scores, unperturbed first.
- `faithfulness_correlation` (Bhatt et al. 2020; Quantus `FaithfulnessCorrelation`): Pearson's
  correlation, over `nr_runs` random subsets of `subset_size` input features (elements of x, every
  channel its own, as Quantus), between the map's sum over the subset and the score's drop when
  the subset is replaced by the baseline. (Quantus' default subset of 224 features is a speck of
  a 3D volume: raise it there.)

Scores: with softmax=True (Quantus' default for pixel flipping and region perturbation, and
RISE's for deletion / insertion) a classifier is scored by its class probability when its output is
logits; faithfulness correlation uses the output as it is (Quantus' default).

Baselines (`perturb_baseline`): "zero"; "black" / "white" (the sample's minimum / maximum, as
Quantus); "mean" (each channel's mean over the unperturbed sample: Quantus 0.6 instead takes the
mean of its whole padded array again at every step, perturbed values included); "blur" (each
channel Gaussian-blurred, `blur_sigma` voxels), or a number.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from nxrt.errors import InputError
from nxrt.evaluation import Metric, prepared, spatial_map
from nxrt.params import Param

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # (numpy < 2 has only trapz)
BASELINES = ("zero", "black", "white", "mean", "blur")


def baseline(ctx, x: np.ndarray, kind, sigma: float) -> np.ndarray:
    """The replacement values for every element of the sample x [1, ...]."""
    if not isinstance(kind, str):
        return np.full_like(x, float(kind))
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "black":
        return np.full_like(x, x.min())
    if kind == "white":
        return np.full_like(x, x.max())
    axes = tuple(ctx.layout.spatial_axes(x.ndim))
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape).astype(x.dtype)
    if kind == "blur":
        return gaussian_blur(x, sigma, axes)
    raise InputError(f"perturb_baseline '{kind}' is not one of {', '.join(BASELINES)} or a number")


def gaussian_blur(x: np.ndarray, sigma: float, axes) -> np.ndarray:
    """x blurred by a Gaussian of `sigma` voxels along each of `axes` (separable, truncated at 3
    sigma, the edges mirrored)."""
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(3 * sigma + 0.5))  # (scipy.ndimage's truncation at 3 sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = x.astype(np.float32)  # (float32 sums of <= 61 taps: ~1e-7 relative, at half the memory traffic)
    for axis in axes:
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (min(radius, n - 1), min(radius, n - 1))
        padded = np.pad(out, pad, mode="reflect") if n > 1 else out
        r = pad[axis][0]
        acc = np.zeros_like(out)
        lead = (slice(None),) * axis
        for k, w in enumerate(taps.astype(np.float32)):
            shift = k - radius
            if abs(shift) > r:
                continue
            acc += w * padded[lead + (slice(r + shift, r + shift + n),)]  # (a view: no copy)
        out = acc / np.float32(sum(w for k, w in enumerate(taps) if abs(k - radius) <= r))
    return out.astype(x.dtype)


def patch_ids(spatial: tuple[int, ...], patch) -> tuple[np.ndarray, int]:
    """([*spatial] the patch index of every voxel, number of patches): boxes of `patch` voxels on
    the grid padded evenly on both sides to a multiple of the patch (as Quantus 0.6)."""
    size = [int(patch)] * len(spatial) if np.isscalar(patch) else [int(p) for p in patch]
    if len(size) != len(spatial):
        raise InputError(f"patch_size {list(size)} has {len(size)} entries; the grid has {len(spatial)} axes")
    ids = np.zeros(spatial, np.int64)
    count = 1
    for axis, (n, p) in enumerate(zip(spatial, size, strict=True)):
        p = max(1, p)
        lo = ((p - n % p) // 2) if n % p else 0
        blocks = (n + lo + p - 1) // p
        index = (np.arange(n) + lo) // p
        shape = [1] * len(spatial)
        shape[axis] = n
        ids = ids * blocks + index.reshape(shape)
        count *= blocks
    return ids, count


def ranked_patches(ctx, a, patch, abs: bool, normalise: bool, order: str = "morf") -> tuple[np.ndarray, np.ndarray]:
    """(voxel rank [*spatial]: the position of each voxel's patch in `order`, voxels per rank)."""
    m = prepared(spatial_map(ctx, a), abs, normalise)
    ids, count = patch_ids(m.shape, patch)
    sums = np.bincount(ids.ravel(), weights=m.ravel(), minlength=count)
    voxels = np.bincount(ids.ravel(), minlength=count)
    if order == "morf":
        ranking = np.argsort(-sums, kind="stable")
    elif order == "lerf":
        ranking = np.argsort(sums, kind="stable")
    else:
        ranking = ctx.rng.permutation(count)
    ranking = ranking[voxels[ranking] > 0]  # (a patch wholly in the padding has no voxel)
    rank_of = np.full(count, np.iinfo(np.int64).max, np.int64)
    rank_of[ranking] = np.arange(ranking.size)
    return rank_of[ids], voxels[ranking]


def scores_of(ctx, count: int, make, softmax: bool) -> np.ndarray:
    """The explained score of `count` generated inputs (make(start, stop) -> the inputs start..stop-1
    stacked [stop - start, ...]), scored a forward batch at a time (softmax: see
    EvaluationContext.scores)."""
    out = np.empty(count, np.float64)
    size = max(1, ctx.batch_size)
    for start in range(0, count, size):
        stop = min(count, start + size)
        out[start:stop] = ctx.scores(make(start, stop), softmax)
    return out


def cumulative(ctx, first: np.ndarray, second: np.ndarray, rank: np.ndarray, thresholds: np.ndarray):
    """make(start, stop) for scores_of: input k is `first` [1, ...] with `second`'s values (every
    channel) at the voxels whose rank is below thresholds[k]. One vectorised step per batch: at
    thousands of small steps (pixel flipping) a per-input loop costs a third of the forwards."""
    channel = ctx.layout.channel_axis(first.ndim)
    flat = rank.reshape(-1)

    def make(start: int, stop: int) -> np.ndarray:
        inside = flat[None, :] < np.asarray(thresholds[start:stop])[:, None]
        inside = np.expand_dims(inside.reshape(stop - start, *rank.shape), channel)
        return np.where(inside, second, first).astype(np.float32, copy=False)

    return make


def _softmax_param(default: bool) -> Param:
    return Param("softmax", bool, default, "score a classifier by its class probability (when its output is "
                 "not one already); a segmenter's scores are used as they are")


PATCH = Param("patch_size", "ints", 8, "patch size in voxels: one integer or one per spatial axis", minimum=1)
STEPS = Param("steps", int, 20, "equal shares of the patches, perturbed cumulatively", minimum=1)
ABS = Param("abs", bool, False, "rank by |a| (after normalising)")
NORMALISE = Param("normalise", bool, True, "divide the map by its largest |value| first")
SIGMA = Param("blur_sigma", float, 5.0, "Gaussian blur of the 'blur' baseline, in voxels", minimum=0)


def _baseline_param(default: str) -> Param:
    return Param("perturb_baseline", "any", default, f"replacement: {', '.join(BASELINES)} or a number")


class _Curve(Metric):
    family = "faithfulness"
    needs = ("model",)
    parameters = (STEPS, PATCH, _baseline_param("zero"), SIGMA, ABS, NORMALISE, _softmax_param(True))
    inserting = False

    def score(self, ctx, a, mask, steps, patch_size, perturb_baseline, blur_sigma, abs, normalise, softmax):
        x = ctx.x
        rank, voxels = ranked_patches(ctx, a, patch_size, abs, normalise)
        base = baseline(ctx, x, perturb_baseline, blur_sigma)
        n = voxels.size
        cut = [math.ceil(k * n / steps) for k in range(steps + 1)]  # patches changed after step k
        fraction = np.concatenate([[0], np.cumsum(voxels, dtype=np.float64)])[cut] / voxels.sum()
        first, second = (base, x) if self.inserting else (x, base)
        scores = scores_of(ctx, steps + 1, cumulative(ctx, first, second, rank, np.array(cut)), softmax)
        full = scores[-1] if self.inserting else scores[0]  # the step that is x itself: no extra forward
        if full == 0:
            return {self.name: float("nan"), f"{self.name}_curve": np.full(steps + 1, np.nan)}
        curve = scores / full
        return {self.name: float(_trapezoid(curve, fraction)), f"{self.name}_curve": curve}


class Deletion(_Curve):
    """Area under the normalised score curve as the most relevant patches are removed (lower is
    better; see the module docstring)."""

    name = "deletion"
    summary = "score left as the most relevant patches are removed (area; lower is better)"


class Insertion(_Curve):
    """Area under the normalised score curve as the most relevant patches are inserted into the
    baseline (higher is better; see the module docstring)."""

    name = "insertion"
    summary = "score regained as the most relevant patches are inserted (area; higher is better)"
    parameters = (STEPS, PATCH, _baseline_param("blur"), SIGMA, ABS, NORMALISE, _softmax_param(True))
    inserting = True


class RegionPerturbation(Metric):
    """AOPC of region perturbation (Samek et al. 2017; Quantus `RegionPerturbation`): the mean
    drop of the explained score as `regions_evaluation` patches are perturbed one after another
    in `order` (morf: most relevant first; lerf: least; random)."""

    name = "region_perturbation"
    family = "faithfulness"
    summary = "mean score drop as patches are perturbed in order (AOPC; morf: higher is better)"
    needs = ("model",)
    parameters = (PATCH, Param("order", str, "morf", "most relevant first, least, or random",
                               choices=("morf", "lerf", "random")),
                  Param("regions_evaluation", int, 100, "patches perturbed, one after another", minimum=1),
                  _baseline_param("black"), SIGMA, ABS, NORMALISE, _softmax_param(True))

    def score(self, ctx, a, mask, patch_size, order, regions_evaluation, perturb_baseline, blur_sigma, abs,
              normalise, softmax):
        x = ctx.x
        rank, voxels = ranked_patches(ctx, a, patch_size, abs, normalise, order)
        steps = min(regions_evaluation, voxels.size)
        base = baseline(ctx, x, perturb_baseline, blur_sigma)
        scores = scores_of(ctx, steps + 1, cumulative(ctx, x, base, rank, np.arange(steps + 1)), softmax)
        return {self.name: float(np.mean(scores[0] - scores[1:])), f"{self.name}_curve": scores}


class FaithfulnessCorrelation(Metric):
    """Pearson correlation between the map's sum over random feature subsets and the score drop
    when they are replaced (Bhatt et al. 2020; Quantus `FaithfulnessCorrelation`; see the module
    docstring)."""

    name = "faithfulness_correlation"
    family = "faithfulness"
    summary = "correlation of subset relevance with the score drop when the subset is removed"
    needs = ("model",)
    parameters = (Param("nr_runs", int, 100, "random subsets", minimum=2),
                  Param("subset_size", int, 224, "input features per subset", minimum=1),
                  _baseline_param("black"), SIGMA, ABS, NORMALISE, _softmax_param(False))

    def score(self, ctx, a, mask, nr_runs, subset_size, perturb_baseline, blur_sigma, abs, normalise, softmax):
        x = ctx.x
        m = np.broadcast_to(prepared(a, abs, normalise), x.shape).ravel()
        if subset_size > m.size:
            raise InputError(f"faithfulness_correlation: subset_size {subset_size} exceeds the input's "
                             f"{m.size} features")
        base = baseline(ctx, x, perturb_baseline, blur_sigma).ravel()
        subsets = [ctx.rng.choice(m.size, subset_size, replace=False) for _ in range(nr_runs)]

        def make(start, stop):
            flat = np.repeat(x.reshape(1, -1), stop - start, axis=0)
            for row, k in enumerate(range(start, stop)):
                flat[row, subsets[k]] = base[subsets[k]]
            return flat.reshape(stop - start, *x.shape[1:])

        # the subsets and the baseline, not the map, decide the perturbed inputs: every method
        # evaluated on this sample shares their scores
        chosen = np.stack(subsets)
        key = (self.name, hashlib.blake2b(chosen.tobytes(), digest_size=16).hexdigest(), chosen.shape,
               repr(perturb_baseline), blur_sigma, softmax)
        scored = ctx.shared(key, lambda: np.concatenate([ctx.scores(x, softmax), scores_of(ctx, nr_runs, make,
                                                                                            softmax)]))
        drops = scored[0] - scored[1:]
        sums = np.array([m[s].sum() for s in subsets])
        if np.std(drops) == 0 or np.std(sums) == 0:
            return {self.name: float("nan")}
        return {self.name: float(np.corrcoef(sums, drops)[0, 1])}
