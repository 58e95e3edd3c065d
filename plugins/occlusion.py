"""Occlusion (Zeiler & Fergus 2014): forward passes only."""

from __future__ import annotations

import itertools

import numpy as np

from nxrt.errors import InputError
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
    defaults = {"patch": None, "stride": None, "baseline": 0.0}

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
        first = ctx.layout == "channels_first"
        total = np.zeros(spatial, np.float64)
        count = np.zeros(spatial, np.float64)
        for i in range(0, len(windows), max(1, ctx.batch_size)):
            chunk = windows[i:i + max(1, ctx.batch_size)]
            batch = np.repeat(x, len(chunk), axis=0)
            for j, w in enumerate(chunk):
                region = tuple(slice(a, a + p) for a, p in zip(w, patch, strict=True))
                if first:
                    batch[(j, slice(None)) + region] = baseline
                else:
                    batch[(j,) + region] = baseline
            drops = score0 - ctx.forward(batch)[:, targets].sum(axis=1)
            for w, drop in zip(chunk, drops, strict=True):
                region = tuple(slice(a, a + p) for a, p in zip(w, patch, strict=True))
                total[region] += drop
                count[region] += 1
        attr = np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)
        channels = x.shape[1] if first else x.shape[-1]
        out = np.repeat(attr[None], channels, axis=0)
        return (out[None] if first else np.moveaxis(out, 0, -1)[None]).astype(np.float32)
