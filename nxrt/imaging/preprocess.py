"""From the image grid to the model's input and back: normalisation, centre crop/pad, layout.

`prepare()` returns the model-space array and a `Geometry` that maps any model-space map back to
the original voxel grid exactly (the inverse crop/pad), so outputs overlay the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Geometry:
    """Centre crop/pad between the image grid (shape `image_shape`) and the model grid (`model_shape`).

    For each axis, image voxel i sits at model voxel i + offset (offset > 0: padded, < 0: cropped).
    """

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    offsets: tuple[int, ...]

    @classmethod
    def centred(cls, image_shape, model_shape) -> Geometry:
        offsets = tuple((m - i) // 2 for i, m in zip(image_shape, model_shape, strict=True))
        return cls(tuple(image_shape), tuple(model_shape), offsets)

    def _slices(self):
        src, dst = [], []
        for i, m, o in zip(self.image_shape, self.model_shape, self.offsets, strict=True):
            lo_img, lo_mod = max(0, -o), max(0, o)
            n = min(i - lo_img, m - lo_mod)
            src.append(slice(lo_img, lo_img + n))
            dst.append(slice(lo_mod, lo_mod + n))
        return tuple(src), tuple(dst)

    def to_model(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """[*image_shape, ...] -> [*model_shape, ...] (trailing axes, e.g. channels, kept)."""
        src, dst = self._slices()
        out = np.full(self.model_shape + volume.shape[len(self.image_shape):], fill, dtype=volume.dtype)
        out[dst] = volume[src]
        return out

    def to_image(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """[*model_shape, ...] -> [*image_shape, ...]: the exact inverse (cropped regions get `fill`)."""
        src, dst = self._slices()
        out = np.full(self.image_shape + volume.shape[len(self.model_shape):], fill, dtype=volume.dtype)
        out[src] = volume[dst]
        return out


def normalize(data: np.ndarray, mode: str | None) -> np.ndarray:
    """Per-channel normalisation of [*spatial, C]: 'zscore' inside the brain (nonzero voxels of that
    channel), 'minmax' to 0..1, or 'none'. Background (zero) voxels stay zero under zscore."""
    mode = mode or "none"
    out = data.astype(np.float32, copy=True)
    for c in range(out.shape[-1]):
        ch = out[..., c]
        if mode == "zscore":
            brain = ch != 0
            if brain.any():
                vals = ch[brain]
                std = float(vals.std())
                ch[brain] = (vals - float(vals.mean())) / (std if std > 0 else 1.0)
        elif mode == "minmax":
            lo, hi = float(ch.min()), float(ch.max())
            ch[...] = (ch - lo) / (hi - lo) if hi > lo else 0.0
        elif mode != "none":
            raise InputError(f"normalisation '{mode}' is not one of zscore, minmax, none")
    return out


def prepare(data: np.ndarray, model_spatial: tuple[int, ...] | None, layout: str,
            mode: str | None) -> tuple[np.ndarray, Geometry]:
    """[*spatial, C] image data -> ([1, C, *model_spatial] or [1, *model_spatial, C], geometry)."""
    spatial = data.shape[:-1]
    target = tuple(model_spatial) if model_spatial else spatial
    if len(target) != len(spatial):
        raise InputError(f"the model takes {len(target)}D inputs but the case is {len(spatial)}D")
    geometry = Geometry.centred(spatial, target)
    arr = geometry.to_model(normalize(data, mode))
    arr = np.moveaxis(arr, -1, 0)[None] if layout == "channels_first" else arr[None]
    return np.ascontiguousarray(arr, dtype=np.float32), geometry


def to_image_channels_last(a: np.ndarray, layout: str, geometry: Geometry) -> np.ndarray:
    """One sample's model-space attribution ([C, *s] or [*s, C]) -> image grid [*image_spatial, C]."""
    if layout == "channels_first":
        a = np.moveaxis(a, 0, -1)
    return geometry.to_image(a)
