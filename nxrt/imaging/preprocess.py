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

    def inside(self, volume: np.ndarray) -> np.ndarray:
        """The part of a model-space volume that lies inside the image (a view; padding dropped)."""
        return volume[self._slices()[1]]

    def to_image(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """[*model_shape, ...] -> [*image_shape, ...]: the exact inverse (cropped regions get `fill`)."""
        src, dst = self._slices()
        # Fortran order like NIfTI's own: writing it out is then a straight copy
        out = np.full(self.image_shape + volume.shape[len(self.model_shape):], fill, dtype=volume.dtype, order="F")
        out[src] = volume[dst]
        return out


def channel_stats(data: np.ndarray, mode: str | None) -> list[tuple[float, float]]:
    """Per-channel (offset, scale) with normalized = (value - offset) / scale, from [*spatial, C].

    zscore: mean and std of the channel's nonzero (brain) voxels; background voxels stay zero.
    The sums run over the whole channel (zeros add nothing to them), so no masked copy is made."""
    mode = mode or "none"
    if mode not in ("zscore", "minmax", "none"):
        raise InputError(f"normalisation '{mode}' is not one of zscore, minmax, none")
    stats = []
    for c in range(data.shape[-1]):
        ch = data[..., c]
        if mode == "zscore":
            n = int(np.count_nonzero(ch))
            if n == 0:
                stats.append((0.0, 1.0))
                continue
            total, squares = _sums(ch)
            mean = total / n
            var = max(0.0, squares / n - mean * mean)
            std = var ** 0.5
            stats.append((mean, std if std > 0 else 1.0))
        elif mode == "minmax":
            lo, hi = float(ch.min()), float(ch.max())
            stats.append((lo, hi - lo) if hi > lo else (lo, np.inf))
        else:
            stats.append((0.0, 1.0))
    return stats


def _sums(ch: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """Sum and sum of squares in float64, a cache-sized block at a time (no volume-sized temporary)."""
    flat = ch.ravel(order="K") if (ch.flags.c_contiguous or ch.flags.f_contiguous) else ch.ravel()
    total = squares = 0.0
    for i in range(0, flat.size, block):
        part = flat[i:i + block].astype(np.float64)
        total += float(part.sum())
        squares += float(part @ part)
    return total, squares


def _normalize_channel(ch: np.ndarray, mode: str, stat: tuple[float, float]) -> np.ndarray:
    offset, scale = np.float32(stat[0]), np.float32(stat[1])
    if mode == "zscore":
        return np.where(ch != 0, (ch - offset) / scale, np.float32(0))
    if mode == "minmax":
        return (ch - offset) / scale
    return ch


def prepare(data: np.ndarray, model_spatial: tuple[int, ...] | None, layout: str,
            mode: str | None) -> tuple[np.ndarray, Geometry]:
    """[*spatial, C] image data -> ([1, C, *model_spatial] or [1, *model_spatial, C], geometry).

    The statistics come from the whole image; only the model's crop is normalised (4x less work on
    a BraTS case whose 240x240x155 grid is cropped to 128^3), one channel at a time, straight into
    the model's layout."""
    spatial = data.shape[:-1]
    target = tuple(model_spatial) if model_spatial else spatial
    if len(target) != len(spatial):
        raise InputError(f"the model takes {len(target)}D inputs but the case is {len(spatial)}D")
    geometry = Geometry.centred(spatial, target)
    mode = mode or "none"
    stats = channel_stats(data, mode)
    src, dst = geometry._slices()
    channels = data.shape[-1]
    first = layout == "channels_first"
    arr = np.zeros((1, channels, *target) if first else (1, *target, channels), np.float32)  # padding stays 0
    for c, stat in enumerate(stats):
        into = arr[0, c] if first else arr[0, ..., c]
        into[dst] = _normalize_channel(data[(*src, c)], mode, stat)
    return arr, geometry


def to_image_channels_last(a: np.ndarray, layout: str, geometry: Geometry) -> np.ndarray:
    """One sample's model-space attribution ([C, *s] or [*s, C]) -> image grid [*image_spatial, C]."""
    if layout == "channels_first":
        a = np.moveaxis(a, 0, -1)
    return geometry.to_image(a)
