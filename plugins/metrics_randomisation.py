"""Randomisation metrics: sanity checks of Adebayo et al. 2018 -- a map that does not change when
the model's weights are randomised cannot be explaining what the model learnt.

The model's weighted layers (Conv, ConvTranspose, Gemm, MatMul with weight initializers:
`passes.weighted_layers`) are randomised by an ONNX pass on the initializers (`passes.randomised`:
each tensor redrawn from a normal of its own mean and std, seeded) -- framework-free; each
randomised model is explained by the same method with the same parameters and target
(`Explainer.with_weights`: its sessions are built for it, not stored in the disk cache).

- `mprt` (Quantus `MPRT`): cascading randomisation from the output layer back (`layer_order`
  "top_down"; "independent": one layer at a time). The value is Spearman's rank correlation of
  the original map with the map after full randomisation (every layer; near 0 passes the check);
  `mprt_curve` that correlation after each layer from the output back (the last entry is full
  randomisation) and `mprt_ssim_curve` the SSIM of the maps summed over channels, in their 2D/3D
  grid. As Quantus, the maps are compared after abs and normalisation, one explanation per
  weighted layer (Quantus' default skip_layers=False); skip_layers=True explains only the fully
  randomised model (the value is the same, the curves then have one entry: one explanation instead
  of one per layer, for costly methods on deep 3D models).
- `efficient_mprt` (Hedström et al. 2024; Quantus `EfficientMPRT`): the relative rise of the map's
  complexity (discrete entropy of a `n_bins` histogram of the normalised map) from the original
  to the fully randomised model: a map that explains the model becomes noise (positive, larger is
  better). n_bins is fixed here (Quantus searches a bin count per batch). As Quantus, the raw
  signed map by default (abs and normalise False; normalising never changes an equal-width
  histogram's entropy).
"""

from __future__ import annotations

import numpy as np

from nxrt.evaluation import Metric, prepared, spatial_map
from nxrt.evaluation.stats import spearman, ssim
from nxrt.params import Param

SEED = Param("seed", int, 42, "seed of the randomised weights")


def randomised_models(ctx, order: str, seed: int, only_last: bool):
    """(layer names from the output back, Explainers to explain with: one per layer, or only the
    fully randomised one)."""
    from nxrt import passes

    proto = ctx.explainer.model.proto
    layers = passes.weighted_layers(proto)
    steps = range(len(layers) - 1, len(layers)) if only_last else range(len(layers))
    for k in steps:
        if order == "independent":
            chosen = layers[k][1]
        else:  # cascading from the output back
            chosen = [w for _, weights in layers[:k + 1] for w in weights]
        yield layers[k][0], ctx.explainer.with_weights(passes.randomised(proto, chosen, seed))


class MPRT(Metric):
    """Model parameter randomisation test (see the module docstring)."""

    name = "mprt"
    family = "randomisation"
    summary = "rank correlation of the map with the map of a randomised model (near 0 passes)"
    needs = ("model", "method")
    default = False  # one explanation per layer: asked for, not run by default
    parameters = (Param("layer_order", str, "top_down", "cascading from the output back, or one layer at a time",
                        choices=("top_down", "independent")), SEED,
                  Param("skip_layers", bool, False, "explain only the fully randomised model, not each layer's"),
                  Param("abs", bool, True, "compare |a| (after normalising)"),
                  Param("normalise", bool, True, "divide each map by its largest |value| first"))

    def score(self, ctx, a, mask, layer_order, seed, skip_layers, abs, normalise):
        ref = prepared(a, abs, normalise)
        ref_map = prepared(spatial_map(ctx, a), abs, normalise)
        rho, structure = [], []
        for _, model in randomised_models(ctx, layer_order, seed, skip_layers and layer_order == "top_down"):
            b = ctx.explain(explainer=model)
            rho.append(spearman(ref, prepared(b, abs, normalise)))
            structure.append(ssim(ref_map, prepared(spatial_map(ctx, b), abs, normalise)))
        return {self.name: rho[-1], f"{self.name}_curve": np.array(rho), f"{self.name}_ssim_curve": np.array(structure)}


def discrete_entropy(a: np.ndarray, n_bins: int) -> float:
    """Shannon entropy (nats) of a histogram of `a` with n_bins equal bins over its range."""
    counts, _ = np.histogram(np.asarray(a, np.float64).ravel(), bins=n_bins)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class EfficientMPRT(Metric):
    """Efficient MPRT (see the module docstring)."""

    name = "efficient_mprt"
    family = "randomisation"
    summary = "relative rise of the map's entropy when the model is randomised (higher passes)"
    needs = ("model", "method")
    default = False
    parameters = (SEED, Param("n_bins", int, 100, "histogram bins of the entropy", minimum=2),
                  Param("abs", bool, False, "|a| (after normalising)"),
                  Param("normalise", bool, False, "divide each map by its largest |value| first"))

    def score(self, ctx, a, mask, seed, n_bins, abs, normalise):
        (_, model), = randomised_models(ctx, "top_down", seed, only_last=True)
        before = discrete_entropy(prepared(a, abs, normalise), n_bins)
        after = discrete_entropy(prepared(ctx.explain(explainer=model), abs, normalise), n_bins)
        value = (after - before) / before if before > 0 else float("nan")
        return {self.name: value, f"{self.name}_entropy_before": before, f"{self.name}_entropy_after": after}
