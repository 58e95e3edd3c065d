"""Volumes for the HTML report: turned to RAS voxel order, cropped to the brain, quantised to one
byte per voxel, gzip-compressed and base64-encoded, so a page carries its own data and the
browser inflates it with its built-in `DecompressionStream("gzip")` (no library, no network).

One byte is enough for what the page shows: a scan through a 1..99th-percentile grey window (in
SCAN_LEVELS levels), a display map in 0..1 (256 levels, as the colour map has; what lies at or
below the floor the page shows from is 0), the outlines as bits. Scans and maps are stored as
differences along z (smooth data compress far better). Cropping to the
brain's bounding box (plus a margin) keeps a BraTS case at about a quarter of its grid.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..imaging.figures import grey_window

#: voxels of air kept around the brain's bounding box
MARGIN = 3
#: gzip level: 1 (level 6 compresses a noisy scan ~4% better at 1.5-3x the time)
LEVEL = 1
#: grey levels of a scan in the page: 64 (6 bits; a scan's noise is larger than the step) cut a
#: BraTS-size page by a quarter against 256
SCAN_LEVELS = 64


@dataclass(frozen=True)
class Frame:
    """How the page's volumes sit in the case's file: `order` / `flip` turn a file-order array into
    RAS order (np.transpose then flips), `start` / `shape` are the crop in RAS order, `affine`
    maps page voxels to world mm and `to_file` page voxels to the file's voxel indices."""

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    start: tuple[int, int, int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    to_file: np.ndarray

    def take(self, volume) -> np.ndarray:
        """A file-order [X, Y, Z] volume (or anything np.asarray reads) in the page's RAS crop."""
        ras = np.transpose(np.asarray(volume), self.order)
        ras = ras[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return ras[tuple(slice(s, s + n) for s, n in zip(self.start, self.shape, strict=True))]


def frame(brain: np.ndarray, affine, spacing: Sequence[float]) -> Frame:
    """The page's frame for a case whose brain (nonzero scan, any channel) is `brain` [X, Y, Z]."""
    from ..imaging.orientation import voxel_axes

    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    axes = voxel_axes(affine)  # [voxel axis] -> (world axis, direction)
    order = tuple(int(np.flatnonzero(axes[:, 0] == w)[0]) for w in range(3))  # RAS axis w <- voxel axis
    flip = tuple(bool(axes[order[w], 1] < 0) for w in range(3))
    shape_file = brain.shape
    ras = np.transpose(brain, order)[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
    found = np.nonzero(ras)
    if found[0].size:
        lo = [max(0, int(f.min()) - MARGIN) for f in found]
        hi = [min(n, int(f.max()) + 1 + MARGIN) for f, n in zip(found, ras.shape, strict=True)]
    else:
        lo, hi = [0, 0, 0], list(ras.shape)
    # page voxel (i, j, k) -> file voxel: along RAS axis w, file axis order[w], mirrored where flipped
    to_file = np.zeros((4, 4))
    to_file[3, 3] = 1
    for w in range(3):
        axis, n = order[w], shape_file[order[w]]
        if flip[w]:
            to_file[axis, w], to_file[axis, 3] = -1.0, n - 1 - lo[w]
        else:
            to_file[axis, w], to_file[axis, 3] = 1.0, lo[w]
    spacing_file = [float(s) if s and s > 0 else 1.0 for s in list(spacing)[:3]]
    return Frame(order, flip, tuple(lo), tuple(h - lo_ for h, lo_ in zip(hi, lo, strict=True)),
                 tuple(spacing_file[order[w]] for w in range(3)), affine @ to_file, to_file)


def grey_bytes(scan: np.ndarray, levels: int = 256) -> np.ndarray:
    """A scan as uint8 through its 1..99th-percentile window of the nonzero voxels: 0 stays 0 (air,
    where the page shows no map), the brain is 1..levels-1."""
    scan = np.asarray(scan, np.float32)
    inside = scan != 0
    lo, hi = grey_window(scan)
    out = np.clip((scan - lo) / (hi - lo), 0, 1) * (levels - 2) + 1
    return np.where(inside, out + 0.5, 0).astype(np.uint8)


def unit_bytes(values, floor: float = 0.0) -> np.ndarray:
    """Values in 0..1 as uint8 0..255; those at or below `floor` (which the page does not show) as 0,
    which compresses a noisy gradient map to a fraction of its size."""
    values = np.asarray(values, np.float32)
    out = (np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)
    out[values <= floor] = 0
    return out


def packed(volume: np.ndarray, delta: bool = True) -> str:
    """uint8 [X, Y, Z] -> base64 of its gzip-compressed C-order bytes (index (x * Y + y) * Z + z);
    delta: each voxel stored as its difference (mod 256) from the one before it along z, which a
    smooth map or a scan's tissue compresses to ~10% less (scans) or a fraction (smooth maps)."""
    volume = np.ascontiguousarray(volume, np.uint8)
    if delta:
        volume = np.diff(volume, axis=-1, prepend=np.uint8(0))  # (uint8 arithmetic wraps mod 256)
    return base64.b64encode(gzip.compress(volume.tobytes(), compresslevel=LEVEL, mtime=0)).decode("ascii")


def unpacked(text: str, shape: Sequence[int], delta: bool = True) -> np.ndarray:
    """The inverse of `packed` (what the page's script does)."""
    volume = np.frombuffer(gzip.decompress(base64.b64decode(text)), np.uint8).reshape(tuple(shape))
    return np.cumsum(volume, axis=-1, dtype=np.uint8) if delta else volume
