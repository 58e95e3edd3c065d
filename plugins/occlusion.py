"""Occlusion (Zeiler & Fergus 2014): forward passes only."""

from __future__ import annotations

import itertools

import numpy as np

from nxrt.errors import InputError
from nxrt.params import Param
from nxrt.registry import Method


def _per_axis(value, dims, name, default):
    if value is None:
        value = [default(d) for d in dims]
    values = [int(value)] * len(dims) if np.isscalar(value) else [int(v) for v in value]
    if len(values) != len(dims) or min(values) < 1:
        raise InputError(f"{name} must be a positive integer or one per spatial axis ({len(dims)}), got {value!r}")
    return values


class Occlusion(Method):
    """Score drop when a patch (all channels) is replaced by the baseline, averaged over the patches
    that cover each voxel.

    patch: size per spatial axis (default 1/8 of each axis); stride (default half the patch);
    baseline: the fill value. Windows are placed like Captum's Occlusion (floor((n - patch) / stride)
    + 1 per axis) and evaluated in chunks of the batch size. Voxels no window covers get 0.
    Reference: Captum Occlusion with sliding windows spanning the channel axis.
    """

    name = "occlusion"
    aliases = ("occ",)
    summary = "score drop when patches of the input are blanked out (forward passes only)"
    parameters = (
        Param("patch", "ints", None, "patch size: one integer or one per spatial axis (default 1/8 of each)",
              minimum=1),
        Param("stride", "ints", None, "window step: one integer or one per axis (default half the patch)",
              minimum=1),
        Param("baseline", float, 0.0, "the value a patch is filled with"),
    )

    def explain(self, ctx, x, target, patch, stride, baseline):
        spatial = ctx.spatial_shape
        patch = _per_axis(patch, spatial, "patch", lambda d: max(1, d // 8))
        default_stride = iter([max(1, p // 2) for p in patch])
        stride = _per_axis(stride, spatial, "stride", lambda d: next(default_stride))
        if any(p > d for p, d in zip(patch, spatial, strict=True)):
            raise InputError(f"patch {patch} is larger than the input's spatial shape {list(spatial)}")
        targets = [target] if np.isscalar(target) else list(target)
        score0 = ctx.forward(x)[0, targets].sum()
        starts = [range(0, d - p + 1, s) for d, p, s in zip(spatial, patch, stride, strict=True)]
        windows = list(itertools.product(*starts))
        # the windows as slices of a channels-first sample: every channel of the patch is blanked
        regions = [(slice(None),) + tuple(slice(a, a + p) for a, p in zip(w, patch, strict=True)) for w in windows]

        def occluded(chunk: slice) -> np.ndarray:
            batch = np.repeat(x, chunk.stop - chunk.start, axis=0)
            view = ctx.layout.to_channels_first(batch)  # a view: writes land in `batch`
            for j, region in enumerate(regions[chunk]):
                view[(j,) + region] = baseline
            return batch

        total = np.zeros(spatial, np.float64)
        count = np.zeros(spatial, np.float64)
        scores = ctx.batched(len(windows), occluded, ctx.forward, size=ctx.forward_batch_size, unit="patches")
        for chunk, chunk_scores in scores:
            drops = score0 - chunk_scores[:, targets].sum(axis=1)
            for region, drop in zip(regions[chunk], drops, strict=True):
                total[region[1:]] += drop
                count[region[1:]] += 1
        attr = np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)
        channels = ctx.layout.channels(x.shape)
        return ctx.layout.from_channels_first(np.repeat(attr[None, None], channels, axis=1)).astype(np.float32)
