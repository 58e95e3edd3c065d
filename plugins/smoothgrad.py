"""SmoothGrad (Smilkov et al. 2017) around any base method."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.params import Param
from nxrt.registry import Method, attribution_of, get_method

KINDS = ("mean", "squared", "vargrad")


class SmoothGrad(Method):
    """Average of a base method over `samples` noisy copies x + N(0, sigma^2).

    sigma = noise * (max(x) - min(x)) of each input (the SmoothGrad paper's convention); kind
    'mean' averages the attributions, 'squared' averages their squares (E[a^2]), 'vargrad' takes
    their variance. With base='vanilla' the noisy copies run in chunks of the batch size; other
    base methods run once per noisy copy (each batches its own steps). `seed` makes it repeatable
    (None: the Explainer's seed). Reference: Captum NoiseTunnel (noise -> 0 gives the base method).
    """

    name = "smoothgrad"
    aliases = ("sg",)
    summary = "gradients averaged over noisy copies of the input (less speckle)"
    parameters = (
        Param("samples", int, 25, "noisy copies", minimum=1),
        Param("noise", float, 0.15, "noise sigma as a fraction of the input's value range", minimum=0),
        Param("kind", str, "mean", "how the copies' attributions combine", choices=KINDS),
        Param("base", str, "vanilla", "the method run on each noisy copy"),
        Param("seed", int, None, "random seed of the noise (default: the Explainer's)"),
        Param("base_params", "mapping", None, "parameters of the base method (CLI: JSON)"),
    )

    def explain(self, ctx, x, target, samples, noise, kind, base, seed, base_params):
        base_method = get_method(base)
        if base_method.name == self.name:
            raise InputError("smoothgrad cannot be its own base method")
        params = base_method.resolve_params(dict(base_params or {}))
        rng = np.random.default_rng(seed) if seed is not None else ctx.rng
        sigma = np.float32(noise * float(x.max() - x.min()))
        vanilla = base_method.name == "vanilla"

        def noisy_copies(chunk: slice) -> np.ndarray:
            # drawn a chunk at a time (the same random stream as drawing them all at once), so memory
            # holds one chunk of copies and attributions, not all of them
            n = chunk.stop - chunk.start
            return x + rng.standard_normal((n,) + x.shape[1:]).astype(np.float32) * sigma

        def attribute(noisy: np.ndarray) -> np.ndarray:
            if vanilla:
                return ctx.gradient(noisy, target)
            return attribution_of(base_method.explain(ctx, noisy, target, **params))

        total = total_sq = None
        copies = ctx.batched(samples, noisy_copies, attribute, size=None if vanilla else 1, unit="noisy copies")
        for _, attrs in copies:
            attrs = attrs.astype(np.float64)
            if total is None:
                total, total_sq = np.zeros(attrs.shape[1:]), np.zeros(attrs.shape[1:])
            total += attrs.sum(axis=0)
            total_sq += (attrs ** 2).sum(axis=0)
        mean, mean_sq = total / samples, total_sq / samples
        out = mean if kind == "mean" else mean_sq if kind == "squared" else mean_sq - mean ** 2
        return out[None].astype(np.float32)
