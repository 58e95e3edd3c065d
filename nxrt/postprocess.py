"""Explicit post-processing of attributions: resampling to the input grid and display maps.

Methods return raw, signed attributions; turning them into something to look at (absolute value,
channel sum, percentile clip, 0..1) is done here, on purpose, by the caller.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from onnx import TensorProto, helper

#: interpolation name -> (ONNX Resize mode, coordinate mode, nearest mode), chosen to equal
#: torch.nn.functional.interpolate(align_corners=False), which Captum's LayerAttribution uses.
_MODES = {
    "linear": ("linear", "pytorch_half_pixel", "floor"),
    "nearest": ("nearest", "asymmetric", "floor"),
}


@lru_cache(maxsize=16)
def _resize_session(rank: int, mode: str):
    import onnxruntime as ort

    onnx_mode, coord, nearest = _MODES[mode]
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=onnx_mode,
                            coordinate_transformation_mode=coord, nearest_mode=nearest)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * rank),
                                                 helper.make_tensor_value_info("sizes", TensorProto.INT64, [rank])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * rank)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def resize(a: np.ndarray, spatial_shape, mode: str = "linear") -> np.ndarray:
    """Resample [N, C, *spatial] to [N, C, *spatial_shape] (bi/trilinear or nearest, as torch does)."""
    if mode not in _MODES:
        from .errors import InputError

        raise InputError(f"interpolation '{mode}' is not one of {', '.join(_MODES)}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if tuple(a.shape[2:]) == tuple(spatial_shape):
        return a
    sizes = np.array(list(a.shape[:2]) + list(spatial_shape), np.int64)
    return _resize_session(a.ndim, mode).run(None, {"x": a, "sizes": sizes})[0]


def channel_magnitude(attribution: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """|a| summed over the channel axis, in float32, one channel at a time (numpy's own reduction
    over a short last axis is ~10x slower on a channels-last BraTS volume)."""
    a = np.moveaxis(np.asarray(attribution), channel_axis, 0)  # a view: a[c] is one channel
    out = np.abs(a[0]).astype(np.float32, copy=False)
    for c in range(1, a.shape[0]):
        out += np.abs(a[c])
    return out


def channel_argmax(scores: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Index of the largest channel at each voxel (the first on ties, like np.argmax), as int16.

    One pass per channel over contiguous memory: 1.5x faster than np.argmax along the leading
    axis of a [C, *spatial] segmentation output, which numpy walks with a strided inner loop."""
    a = np.moveaxis(np.asarray(scores), channel_axis, 0)
    best = a[0].copy()
    index = np.zeros(best.shape, np.int16)
    for c in range(1, a.shape[0]):
        higher = a[c] > best
        index[higher] = c
        np.maximum(best, a[c], out=best)
    return index


def display_map(attribution: np.ndarray, channel_axis: int = 0, percentile: float = 99.0) -> np.ndarray:
    """|a| summed over channels, clipped at the given percentile (nearest rank), scaled to 0..1 (float32)."""
    a = channel_magnitude(attribution, channel_axis)
    top = display_scale(a, percentile)
    return (np.minimum(a, top) / top).astype(np.float32)


def display_scale(magnitude: np.ndarray, percentile: float = 99.0, extra_zeros: int = 0) -> float:
    """The clip value of a display map: the percentile (nearest rank) of the magnitudes, or their
    maximum when that is 0, or 1 when everything is 0.

    A partial sort (np.partition) in float32, 5x faster than np.percentile on a BraTS-size volume;
    the nearest-rank percentile differs from the interpolated one by at most one neighbouring value.
    extra_zeros: zero voxels that belong to the volume but are not in `magnitude` (the image outside
    a model's crop): the percentile is the whole image's while only the crop is sorted.
    """
    flat = np.asarray(magnitude, np.float32).ravel()
    top = 0.0
    k = int(round(percentile / 100.0 * (flat.size + extra_zeros - 1))) - extra_zeros  # rank among the held values
    if flat.size and k >= 0:
        top = float(np.partition(flat, k)[k])
    if top <= 0:
        top = float(flat.max()) if flat.size and flat.max() > 0 else 1.0
    return top
