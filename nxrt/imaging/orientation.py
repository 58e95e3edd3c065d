"""Which voxel axis is which anatomical direction, from the affine (nibabel's `io_orientation`):
the figures show every scan the same way up, and "axial" means the voxel axis nearest the
scanner's inferior-superior axis, whatever order the file stores its voxels in (RAS, LPS, PSL...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the world (RAS+) axis each view holds fixed: a sagittal slice is one x, coronal one y, axial one z
VIEW_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: the world axes across a view's picture: (horizontal, vertical)
VIEW_PLANE = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}
_IDENTITY = np.array([[0, 1], [1, 1], [2, 1]])


def voxel_axes(affine) -> np.ndarray:
    """[3, 2] int: for each voxel axis, the world axis it runs along and its direction (+1/-1).
    Without an affine (or with a degenerate one) the voxel order is taken as RAS."""
    if affine is None:
        return _IDENTITY
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, np.float64)[:4, :4])
    return _IDENTITY if np.isnan(ornt).any() else ornt.astype(int)


def view_axis(view: str, affine) -> int:
    """The voxel axis a `view` ("axial", "coronal", "sagittal") slices across."""
    return int(np.flatnonzero(voxel_axes(affine)[:, 0] == VIEW_WORLD_AXIS[view])[0])


def view_of_axis(axis: int, affine) -> str:
    """The view whose slices cut across voxel axis `axis`."""
    world = int(voxel_axes(affine)[axis, 0])
    return next(v for v, w in VIEW_WORLD_AXIS.items() if w == world)


def view_slice(volume, view: str, center: Sequence[float], affine=None) -> np.ndarray:
    """The 2D picture of `view` through voxel `center`, in the same anatomical directions whatever
    the voxel order: superior up (axial: anterior up), and the patient's right on the picture's
    right (sagittal: anterior on the right), i.e. the neurological convention. `volume` is any
    [X, Y, Z, ...] array or anything indexable like one."""
    ornt = voxel_axes(affine)
    a = view_axis(view, affine)
    index = [slice(None)] * 3
    index[a] = int(round(center[a]))
    plane = np.asarray(volume[tuple(index)])  # over the two other voxel axes, in voxel order
    b, c = (k for k in range(3) if k != a)
    if ornt[b, 0] > ornt[c, 0]:  # put the picture's horizontal world axis first
        plane, b, c = np.swapaxes(plane, 0, 1), c, b
    if ornt[b, 1] < 0:
        plane = plane[::-1]
    if ornt[c, 1] < 0:
        plane = plane[:, ::-1]
    return np.rot90(plane)  # [vertical (increasing upwards), horizontal]


def view_pixel_mm(view: str, spacing: Sequence[float], affine=None) -> tuple[float, float]:
    """(width, height) in mm of one pixel of `view_slice`."""
    world = [1.0, 1.0, 1.0]
    for axis, (w, _) in enumerate(voxel_axes(affine)):
        s = spacing[axis] if axis < len(spacing) else 0
        world[w] = float(s) if s and s > 0 else 1.0
    h, v = VIEW_PLANE[view]
    return world[h], world[v]
