"""SmoothGrad (Smilkov et al. 2017) around any base method."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.registry import Method, get_method

KINDS = ("mean", "squared", "vargrad")


class SmoothGrad(Method):
    """Average of a base method over `samples` noisy copies x + N(0, sigma^2).

    sigma = noise * (max(x) - min(x)) of each input (the SmoothGrad paper's convention); kind
    'mean' averages the attributions, 'squared' averages their squares (E[a^2]), 'vargrad' takes
    their variance. With base='vanilla' the noisy copies run in chunks of the batch size; other
    base methods run once per noisy copy (each batches its own steps). `seed` makes it repeatable.
    Reference: Captum NoiseTunnel (noise -> 0 gives the base method).
    """

    name = "smoothgrad"
    aliases = ("sg",)
    summary = "gradients averaged over noisy copies of the input (less speckle)"
    defaults = {"samples": 25, "noise": 0.15, "kind": "mean", "base": "vanilla", "seed": None, "base_params": None}

    def explain(self, ctx, x, target, samples, noise, kind, base, seed, base_params):
        if kind not in KINDS:
            raise InputError(f"kind '{kind}' is not one of {', '.join(KINDS)}")
        if not isinstance(samples, int | np.integer) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}")
        if noise < 0:
            raise InputError(f"noise must be >= 0, got {noise}")
        base_method = get_method(base)
        if base_method.name == self.name:
            raise InputError("smoothgrad cannot be its own base method")
        params = base_method.params(dict(base_params or {}))
        rng = np.random.default_rng(seed) if seed is not None else ctx.rng
        sigma = noise * float(x.max() - x.min())
        # noisy copies are drawn, explained and summed a chunk at a time (the same random stream as
        # drawing them all at once), so memory holds one chunk, not every sample and its gradient
        chunk = max(1, ctx.batch_size) if base_method.name == "vanilla" else 1
        total = total_sq = None
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            noisy = x + rng.standard_normal((n,) + x.shape[1:]).astype(np.float32) * np.float32(sigma)
            if base_method.name == "vanilla":
                attrs = ctx.gradient(noisy, target)
            else:
                attrs = base_method.explain(ctx, noisy, target, **params)
            attrs = attrs.astype(np.float64)
            if total is None:
                total, total_sq = np.zeros(attrs.shape[1:]), np.zeros(attrs.shape[1:])
            total += attrs.sum(axis=0)
            total_sq += (attrs ** 2).sum(axis=0)
        mean, mean_sq = total / samples, total_sq / samples
        out = mean if kind == "mean" else mean_sq if kind == "squared" else mean_sq - mean ** 2
        return out[None].astype(np.float32)
