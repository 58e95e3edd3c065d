"""From the image grid to the model's input and back: normalisation, centre crop/pad, layout.

`prepare()` returns the model-space array and a `Geometry` that maps any model-space map back to
the original voxel grid exactly (the inverse crop/pad), so outputs overlay the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..layout import Layout


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

    @classmethod
    def slab(cls, image_shape, model_shape_2d, axis: int, index: int) -> Geometry:
        """One slice of a 3D image for a 2D model: image slice `index` along `axis`, centre
        cropped/padded to the model's 2D shape; the model grid keeps that axis with size 1, so
        every map maps back into the 3D image like a 3D one (zero off the slice)."""
        model = list(model_shape_2d)
        model.insert(axis, 1)
        offsets = [(m - i) // 2 for i, m in zip(image_shape, model, strict=True)]
        offsets[axis] = -index
        return cls(tuple(image_shape), tuple(model), tuple(offsets))

    def _slices(self):
        src, dst = [], []
        for i, m, o in zip(self.image_shape, self.model_shape, self.offsets, strict=True):
            lo_img, lo_mod = max(0, -o), max(0, o)
            n = max(0, min(i - lo_img, m - lo_mod))  # 0: no overlap (a block wholly outside the crop)
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

    def inside_of_image(self, volume: np.ndarray) -> np.ndarray:
        """The part of an image-grid volume that the model sees (a view), voxel for voxel aligned
        with `inside(...)` of a model-space volume."""
        return volume[self._slices()[0]]

    def image_origin(self) -> tuple[int, ...]:
        """Image index of the first voxel of `inside(...)` (add it to an index found in that view)."""
        return tuple(s.start for s in self._slices()[0])

    def image_index(self, ijk: np.ndarray) -> np.ndarray:
        """The image voxel index (fractional) of an index found in `inside(...)`."""
        return np.asarray(ijk, np.float64) + np.array(self.image_origin(), np.float64)

    def uncovered_voxels(self) -> int:
        """Image voxels the model grid does not see (zeros of every map there)."""
        return int(np.prod(self.image_shape)) - int(np.prod([s.stop - s.start for s in self._slices()[0]]))

    def to_image(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """[*model_shape, ...] -> [*image_shape, ...]: the exact inverse (cropped regions get `fill`)."""
        src, dst = self._slices()
        # Fortran order like NIfTI's own: writing it out is then a straight copy
        out = np.full(self.image_shape + volume.shape[len(self.model_shape):], fill, dtype=volume.dtype, order="F")
        out[src] = volume[dst]
        return out


@dataclass(frozen=True)
class Resampled:
    """The image grid resampled into the model grid (`--resample`), instead of a centre crop/pad:
    every axis is scaled on its own (linear for values, nearest for labels and masks, half-pixel
    centres, as torch's interpolate with align_corners=False), and every map goes back the same way.
    The whole image is seen, so `inside` is everything; world coordinates follow `model_affine`."""

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    @property
    def scale(self) -> np.ndarray:
        """Image voxels per model voxel, per axis."""
        return np.array(self.image_shape, np.float64) / np.array(self.model_shape, np.float64)

    def to_model(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        return _resample(volume, len(self.image_shape), self.model_shape)

    def to_image(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        return np.asfortranarray(_resample(volume, len(self.model_shape), self.image_shape))

    def inside(self, volume: np.ndarray) -> np.ndarray:
        return volume

    def inside_of_image(self, volume: np.ndarray) -> np.ndarray:
        return self.to_model(volume)

    def image_index(self, ijk: np.ndarray) -> np.ndarray:
        return (np.asarray(ijk, np.float64) + 0.5) * self.scale - 0.5

    def uncovered_voxels(self) -> int:
        return 0

    def model_affine(self, affine: np.ndarray) -> np.ndarray:
        """The affine of the model grid: model voxel m sits at image index (m + 0.5) * scale - 0.5."""
        step = np.eye(4)
        step[:3, :3] = np.diag(self.scale)
        step[:3, 3] = 0.5 * self.scale - 0.5
        return np.asarray(affine, np.float64) @ step


def _resample(volume: np.ndarray, rank: int, shape) -> np.ndarray:
    """[*spatial, *trailing] -> [*shape, *trailing]: linear for floats, nearest for bool/int (the
    labels keep their values), through onnxruntime's Resize (nxrt.postprocess.resize)."""
    from ..postprocess import resize

    volume = np.asarray(volume)
    trailing = volume.shape[rank:]
    stacked = volume.reshape(volume.shape[:rank] + (-1,))
    stacked = np.moveaxis(stacked, -1, 0)[None]  # [1, T, *spatial]
    labels = not np.issubdtype(volume.dtype, np.floating)
    out = resize(stacked.astype(np.float32), tuple(shape), "nearest" if labels else "linear")[0]
    out = np.moveaxis(out, 0, -1).reshape(tuple(shape) + trailing)
    return out.astype(volume.dtype) if labels else out.astype(volume.dtype, copy=False)


class InImageGrid:
    """A model-space volume [*model_shape, *trailing] seen in the image grid, without building it.

    What the outputs need of a 143 MB BraTS-size map is its bytes in NIfTI order (`fortran_blocks`,
    a few MB at a time, for the compressor) and three slices (`[...]`, for the figure); computing
    those from the model's crop avoids allocating, zero-filling and copying the whole grid.
    `np.asarray(...)` still gives the full array.
    """

    def __init__(self, volume: np.ndarray, geometry: Geometry | Resampled, fill: float = 0.0):
        self.volume, self.geometry, self.fill = volume, geometry, fill
        self.trailing = tuple(volume.shape[len(geometry.model_shape):])
        self.shape = tuple(geometry.image_shape) + self.trailing
        self.dtype = volume.dtype
        self.ndim = len(self.shape)
        self._full = None  # a resampled geometry has no cheap partial view: built once when asked

    def __array__(self, dtype=None, copy=None):
        out = self._whole()
        return out if dtype is None else out.astype(dtype, copy=False)

    def _whole(self) -> np.ndarray:
        if not isinstance(self.geometry, Geometry):
            if self._full is None:
                self._full = self.geometry.to_image(self.volume, self.fill)
            return self._full
        return self.geometry.to_image(self.volume, self.fill)

    def __getitem__(self, key) -> np.ndarray:
        """Integer indices and full slices (`[:, :, z]`, `[x]`), over the spatial axes only."""
        if not isinstance(self.geometry, Geometry):
            return np.ascontiguousarray(self._whole()[key])
        key = key if isinstance(key, tuple) else (key,)
        g = self.geometry
        key = key + (slice(None),) * (len(g.image_shape) - len(key))
        key = key[:len(g.image_shape)]
        kept = [axis for axis, k in enumerate(key) if isinstance(k, slice)]
        picked = []
        for axis, k in enumerate(key):
            if isinstance(k, slice):
                if k != slice(None):
                    raise IndexError("InImageGrid takes integer indices and full slices only")
                picked.append(slice(None))
                continue
            k = int(k) + (g.image_shape[axis] if k < 0 else 0)
            if not 0 <= k < g.image_shape[axis]:
                raise IndexError(f"index {k} is out of bounds for axis {axis} of size {g.image_shape[axis]}")
            m = k + g.offsets[axis]
            if not 0 <= m < g.model_shape[axis]:  # a cropped-away plane: all fill
                return np.full(tuple(g.image_shape[a] for a in kept) + self.trailing, self.fill, self.dtype)
            picked.append(m)
        sub = Geometry(*(tuple(v[a] for a in kept) for v in (g.image_shape, g.model_shape, g.offsets)))
        return np.ascontiguousarray(sub.to_image(self.volume[tuple(picked)], self.fill))

    def fortran_blocks(self, block_bytes: int = 2 << 20):
        """The image-grid array's bytes in Fortran (NIfTI) order, as a sequence of F-ordered arrays
        of about `block_bytes` each: a run of planes along the last spatial axis, one trailing index
        (channel) at a time, since in Fortran order the trailing axes vary slowest."""
        if not isinstance(self.geometry, Geometry):
            yield self._whole()
            return
        g = self.geometry
        plane = int(np.prod(g.image_shape[:-1], dtype=np.int64)) * self.dtype.itemsize
        step = max(1, block_bytes // max(1, plane))
        last = g.image_shape[-1]
        for t in np.ndindex(*self.trailing[::-1]):
            vol = self.volume[(Ellipsis, *t[::-1])] if t else self.volume
            for k0 in range(0, last, step):
                n = min(step, last - k0)
                sub = Geometry(g.image_shape[:-1] + (n,), g.model_shape, g.offsets[:-1] + (g.offsets[-1] + k0,))
                yield sub.to_image(vol, self.fill)


MODES = ("zscore", "minmax", "none")


@dataclass(frozen=True)
class Moments:
    """What the z-score needs of one channel, gathered once when the case is read."""

    count: int  # nonzero (brain) voxels
    total: float  # sum of all voxels (the zeros add nothing)
    squares: float  # sum of their squares

    @property
    def finite(self) -> bool:
        """False when the channel holds a NaN or an Inf (its sums are then not finite)."""
        return bool(np.isfinite(self.total) and np.isfinite(self.squares))

    @classmethod
    def of(cls, values: np.ndarray, block: int = 1 << 16) -> Moments:
        """One pass over `values`, a cache-sized block at a time (no volume-sized temporary).

        Small integer volumes (BraTS files are int16) are read in their own type, whose float32
        copies have the very same values: the count and the sum are exact integer reductions and
        the squares are summed in float64 per block (exact for 16-bit values); 10 ms for a BraTS
        channel, 13 ms over its float32 copy. Other volumes are summed in float64. Taken on the
        loading threads, these sums replace a 0.15-0.35 s pass over the stacked float32 case."""
        flat = values.ravel(order="K") if (values.flags.c_contiguous or values.flags.f_contiguous) \
            else values.ravel()
        small_int = np.issubdtype(flat.dtype, np.integer) and flat.dtype.itemsize <= 2
        count, total, squares = 0, 0.0, 0.0
        if small_int:
            count = int(np.count_nonzero(flat))
            total = float(np.add.reduce(flat, dtype=np.int64))
        for i in range(0, flat.size, block):
            part = flat[i:i + block]
            if not small_int:
                count += int(np.count_nonzero(part != 0))  # (count_nonzero on floats is 3x slower)
            part = part.astype(np.float64)
            if not small_int:
                total += float(part.sum())
            squares += float(np.einsum("i,i->", part, part))  # (not BLAS: its idle threads spin on a core)
        return cls(count, total, squares)


def channel_stat(ch: np.ndarray, mode: str | None, moments: Moments | None = None) -> tuple[float, float]:
    """(offset, scale) of one channel, with normalized = (value - offset) / scale.

    zscore: mean and std of the channel's nonzero (brain) voxels; background voxels stay zero.
    `moments` (gathered when the case was read) saves the pass over the channel."""
    mode = mode or "none"
    if mode not in MODES:
        raise InputError(f"normalisation '{mode}' is not one of {', '.join(MODES)}")
    if mode == "zscore":
        m = moments or Moments.of(ch)
        if not m.finite:
            raise InputError("a channel holds NaN/Inf values (or values too large to square); fix the volume")
        if m.count == 0:
            return 0.0, 1.0
        mean = m.total / m.count
        std = max(0.0, m.squares / m.count - mean * mean) ** 0.5
        return mean, std if std > 0 else 1.0
    if mode == "minmax":
        lo, hi = float(ch.min()), float(ch.max())
        return (lo, hi - lo) if hi > lo else (lo, np.inf)
    return 0.0, 1.0


def _normalize_in_place(values: np.ndarray, mode: str, stat: tuple[float, float]) -> None:
    """(values - offset) / scale in float32, in place; zscore keeps zero (background) voxels 0."""
    offset, scale = np.float32(stat[0]), np.float32(stat[1])
    if mode not in ("zscore", "minmax"):
        return
    background = values == 0 if mode == "zscore" else None
    values -= offset
    values /= scale
    if background is not None:
        np.copyto(values, np.float32(0), where=background)


def prepare(data: np.ndarray, model_spatial: tuple[int, ...] | None, layout: str,
            mode: str | None, moments: list[Moments] | None = None,
            slab: tuple[int, int] | None = None, resample: bool = False) -> tuple[np.ndarray, Geometry | Resampled]:
    """[*spatial, C] image data -> ([1, C, *model_spatial] or [1, *model_spatial, C], geometry).

    moments: each channel's `Moments` if the reader gathered them (`Case.moments`); else they
    are computed here. slab: (axis, index) to give a 2D model one slice of a 3D image
    (`Geometry.slab`); the array then keeps that axis with size 1 (the caller squeezes it).

    The statistics come from the whole image; only the model's crop is normalised (4x less work on
    a BraTS case whose 240x240x155 grid is cropped to 128^3), one channel at a time, in the
    model's layout. resample=True: the whole image is normalised (so the background stays 0) and
    then resampled into the model's grid (`Resampled`) instead of cropped."""
    spatial = data.shape[:-1]
    target = tuple(model_spatial) if model_spatial else spatial
    if slab is not None:
        if len(spatial) != 3 or len(target) != 2:
            raise InputError(f"a slice is for a 2D model on a 3D case; this model takes {len(target)}D inputs "
                             f"and the case is {len(spatial)}D")
        geometry = Geometry.slab(spatial, target, *slab)
        target = geometry.model_shape
    elif len(target) != len(spatial):
        raise InputError(f"the model takes {len(target)}D inputs but the case is {len(spatial)}D"
                         + ("; give --slice axial|coronal|sagittal[:INDEX] to explain one slice"
                            if (len(target), len(spatial)) == (2, 3) else ""))
    else:
        geometry = Geometry.centred(spatial, target)
    mode = mode or "none"
    if mode not in MODES:
        raise InputError(f"normalisation '{mode}' is not one of {', '.join(MODES)}")
    if resample and slab is None and tuple(target) != tuple(spatial):
        return _prepare_resampled(data, tuple(target), Layout.of(layout), mode, moments)
    src, dst = geometry._slices()
    channels = data.shape[-1]
    layout = Layout.of(layout)
    arr = np.zeros(layout.shape(channels, target), np.float32)  # padding stays 0
    first = layout.to_channels_first(arr)[0]  # a channels-first view of the one sample
    for c in range(channels):  # (threads over channels gain nothing here: these passes are memory-bound)
        stat = channel_stat(data[..., c], mode, moments[c] if moments else None)
        into = first[c][dst]
        # the crop is copied first (the one pass that reorders NIfTI's x-fastest voxels into the
        # model's layout), then normalised in place on contiguous memory: 2.5x faster than
        # normalising the strided crop into temporaries
        into[...] = data[(*src, c)]
        _normalize_in_place(into, mode, stat)
    return arr, geometry


def _prepare_resampled(data, target, layout: Layout, mode: str, moments) -> tuple[np.ndarray, Resampled]:
    geometry = Resampled(tuple(data.shape[:-1]), target)
    channels = data.shape[-1]
    arr = np.zeros(layout.shape(channels, target), np.float32)
    first = layout.to_channels_first(arr)[0]
    for c in range(channels):
        stat = channel_stat(data[..., c], mode, moments[c] if moments else None)
        whole = np.array(data[..., c], dtype=np.float32, order="F")
        _normalize_in_place(whole, mode, stat)
        first[c] = geometry.to_model(whole)
    return arr, geometry


def to_image_channels_last(a: np.ndarray, layout: str | Layout, geometry: Geometry) -> np.ndarray:
    """One sample's model-space attribution ([C, *s] or [*s, C]) -> image grid [*image_spatial, C]."""
    return geometry.to_image(Layout.of(layout).to_channels_last(a, batch=False))
