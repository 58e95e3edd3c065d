"""Class-activation maps: Grad-CAM, guided Grad-CAM, Grad-CAM++, the layer sweep, activation maps."""

from __future__ import annotations

import numpy as np

from nxrt.errors import InputError
from nxrt.params import Param
from nxrt.registry import Method, MethodResult

INTERPOLATIONS = ("linear", "nearest")
LAYER = Param("layer", str, None, "ONNX tensor or node name (default: the deepest Conv output with more "
              "channels than the model output)")
INTERPOLATION = Param("interpolation", str, "linear", "how the map is resampled to the input grid",
                      choices=INTERPOLATIONS)


def _channels_first(ctx, tensor: str, *arrays):
    axis = ctx.layer_channel_axis(tensor)
    return [np.moveaxis(a, axis, 1).astype(np.float64) for a in arrays]


def gradcam_map(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k), w_k = spatial mean of d score / d A_k; arrays [n, C, *spatial]."""
    return np.maximum((GradCAM.channel_weights(acts, grads) * acts).sum(axis=1, keepdims=True), 0.0)


class _LayerCAM(Method):
    """Shared by the CAM methods: ReLU(sum_k w_k A_k) at one layer, resampled to the input grid."""

    parameters = (LAYER, INTERPOLATION)

    @staticmethod
    def channel_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def explain(self, ctx, x, target, layer, interpolation):
        tensor = ctx.resolve_layer(layer)
        acts, grads = _channels_first(ctx, tensor, *ctx.layer_gradient(x, target, tensor))
        cam = np.maximum((self.channel_weights(acts, grads) * acts).sum(axis=1, keepdims=True), 0.0)
        return MethodResult(ctx.to_input_grid(cam.astype(np.float32), 1, interpolation), {"layer": tensor})


class GradCAM(_LayerCAM):
    """Grad-CAM (Selvaraju et al. 2017) at one layer, resampled to the input grid.

    layer: an ONNX tensor or node name (default: `Context.default_layer`). interpolation: 'linear'
    (bi/trilinear, align_corners=False) or 'nearest'. Returns the input shape with a channel axis of
    size 1. Reference: Captum LayerGradCam(relu_attributions=True) + LayerAttribution.interpolate.
    """

    name = "gradcam"
    aliases = ("gcam", "grad_cam")
    stacks_samples = True
    summary = "coarse map of where a layer's class-relevant features are (ReLU of gradient-weighted activations)"

    @staticmethod
    def channel_weights(acts, grads):
        return grads.mean(axis=tuple(range(2, grads.ndim)), keepdims=True)


class GuidedGradCAM(Method):
    """Guided backprop times the upsampled Grad-CAM map (Selvaraju et al. 2017).

    Same parameters as gradcam; the map broadcasts over the input channels. Reference: Captum
    GuidedGradCam (with the same interpolation mode).
    """

    name = "guided_gradcam"
    aliases = ("ggcam", "guided_grad_cam")
    stacks_samples = True
    summary = "guided backprop detail restricted to the Grad-CAM region"
    parameters = (LAYER, INTERPOLATION)

    def explain(self, ctx, x, target, layer, interpolation):
        cam = GradCAM().explain(ctx, x, target, layer, interpolation)
        return MethodResult(ctx.gradient(x, target, guided=True) * cam.attribution, cam.extras)


class GradCAMPlusPlus(_LayerCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weighted positive gradients.

    alpha = g^2 / (2 g^2 + sum(A) g^3) (0 where g = 0), w_k = sum over space of alpha * ReLU(g);
    map = ReLU(sum_k w_k A_k), resampled like gradcam. Reference: pytorch-grad-cam's GradCAMPlusPlus.
    """

    name = "gradcam_plus_plus"
    aliases = ("gcampp", "gradcam++")
    stacks_samples = True
    summary = "Grad-CAM with pixel-wise weights: better for several instances of a class"

    @staticmethod
    def channel_weights(acts, grads):
        spatial = tuple(range(2, acts.ndim))
        g2, g3 = grads ** 2, grads ** 3
        denom = 2 * g2 + acts.sum(axis=spatial, keepdims=True) * g3
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > 1e-30)
        return (alpha * np.maximum(grads, 0)).sum(axis=spatial, keepdims=True)


class LayerSweep(Method):
    """Grad-CAM at every Conv output (the NeuroXAI network-inspection experiment, paper Fig. 5).

    Returns one map per layer in place of the channel axis ([1, L, *spatial] for channels-first
    models, [1, *spatial, L] for channels-last); the layer names are in `Explanation.extras['layers']`.
    All layers come from one session call.
    """

    name = "layer_sweep"
    aliases = ("sweep", "layers")
    summary = "Grad-CAM at every convolution layer, to see how information flows through the network"
    parameters = (INTERPOLATION, Param("layers", "strs", None, "tensor or node names (default: every Conv output)"))

    def explain(self, ctx, x, target, interpolation, layers):
        names = [ctx.resolve_layer(n) for n in layers] if layers else ctx.layers()
        if not names:
            raise InputError("the model has no Conv layer to sweep; give layers=[...]")
        found = ctx.layer_gradients(x, target, names)
        maps = []
        for name in names:
            acts, grads = _channels_first(ctx, name, *found[name])
            maps.append(ctx.to_input_grid(gradcam_map(acts, grads).astype(np.float32), 1, interpolation))
        axis = ctx.layout.channel_axis(x.ndim)
        return MethodResult(np.concatenate(maps, axis=axis), {"layers": names})


class ActivationMaps(Method):
    """The activation of every filter (channel) of one layer, resampled to the input grid.

    layer: tensor or node name (default as gradcam); filters: channel indices (default
    all). Returns the filters in place of the channel axis.
    """

    name = "activation_maps"
    aliases = ("activations", "filters")
    summary = "per-filter activation maps of one layer"
    parameters = (LAYER, Param("filters", "ints", None, "channel indices (default: all)", minimum=0),
                  INTERPOLATION)

    def explain(self, ctx, x, target, layer, filters, interpolation):
        tensor = ctx.resolve_layer(layer)
        (acts,) = _channels_first(ctx, tensor, ctx.layer_gradient(x, target, tensor)[0])
        if filters is not None:
            idx = [filters] if np.isscalar(filters) else list(filters)
            if any(not 0 <= f < acts.shape[1] for f in idx):
                n = acts.shape[1]
                raise InputError(f"filters {idx}: layer '{tensor}' has {n} filters (0..{n - 1})")
            acts = acts[:, idx]
        return MethodResult(ctx.to_input_grid(acts.astype(np.float32), 1, interpolation), {"layer": tensor})
