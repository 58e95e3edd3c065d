"""Score regions of a segmentation model: which voxels its pooled score averages over.

Three kinds (DESIGN: Scores): the whole output (None, the NeuroXAI pooling head), "predicted"
(each channel over the voxels whose argmax it is; the mask is held constant) and a mask. A mask
comes either on the model's output grid (`Explainer.explain(region=array)`) or drawn on a case's
image grid (`RegionMask`, e.g. `nxrt explain --region roi.nii.gz`), which is mapped through the
same crop/pad as the image. The graph side (the head's nodes) lives in `passes._score_head`; this
module holds the values, the grid mapping and their errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .layout import Layout

PREDICTED = "predicted"
MASK = "mask"
#: the extra graph input a mask region is fed through
FEED = "nxrt_region"


@dataclass(frozen=True)
class Region:
    """A score region on the model's output grid: kind None (every voxel), "predicted" or "mask"
    (then `mask` holds one value per output voxel, spatial axes only)."""

    kind: str | None = None
    mask: np.ndarray | None = None

    def feed(self, layout: Layout) -> np.ndarray | None:
        """The `nxrt_region` input: the mask with a batch axis and a channel axis of size 1."""
        if self.mask is None:
            return None
        return layout.from_channels_first(self.mask[None, None])


WHOLE = Region()


def score_region(value, task: str, spatial_rank: int) -> Region:
    """The Region of an `explain(region=...)` value: None, "predicted" or a mask array over the
    output's `spatial_rank` spatial axes. Every misuse is one InputError."""
    if value is None:
        return WHOLE
    if isinstance(value, Region):
        return value
    if task != "segmentation":
        raise InputError("region applies to segmentation models only; drop it for a classifier")
    if isinstance(value, str):
        if value != PREDICTED:
            raise InputError(f"region '{value}' is not 'predicted' or a mask array")
        return Region(PREDICTED)
    if isinstance(value, RegionMask):
        raise InputError(f"{value.source} is on a case's image grid; map it with region.to_model_grid first "
                         "(nxrt.imaging does this for cases)")
    mask = np.asarray(value, dtype=np.float32)
    if mask.ndim != spatial_rank:
        raise InputError(f"region mask has {mask.ndim} axes; give one value per output voxel "
                         f"({spatial_rank} spatial axes)")
    if not np.any(mask):
        raise InputError("region mask is empty (all zeros); give a mask with at least one voxel")
    return Region(MASK, mask)


@dataclass(frozen=True)
class RegionMask:
    """A region drawn on a case (`--region mask.nii.gz`): voxels in the case's image grid, nonzero
    inside, and the affine of the file it came from (None: not checked)."""

    mask: np.ndarray
    affine: np.ndarray | None = None
    source: str = "the region mask"


def read_region_mask(path: str | Path, label: str | None = None) -> RegionMask:
    """A RegionMask from a NIfTI file; one-line errors for a missing or unreadable file."""
    import nibabel as nib

    label = label or f"--region {path}"
    if not Path(path).exists():
        raise InputError(f"{label}: no such file; give 'predicted' or a mask NIfTI")
    try:
        img = nib.load(str(path))
        return RegionMask(np.asarray(img.dataobj), img.affine, label)
    except Exception as exc:
        raise InputError(f"{label}: cannot read it as NIfTI ({type(exc).__name__}); give 'predicted' "
                         "or a mask NIfTI on the case's grid") from None


def from_cli(text: str | None) -> str | RegionMask | None:
    """`--region` of the CLI: None, 'predicted', or a mask NIfTI path (read now)."""
    if not text:
        return None
    if text == PREDICTED:
        return PREDICTED
    return read_region_mask(text)


def check_on_case(region: RegionMask, case) -> None:
    """A RegionMask must lie on the case's voxel grid (shape, and affine when known); one line if not."""
    if region.mask.shape != case.spatial_shape:
        raise InputError(f"{region.source}: shape {region.mask.shape} differs from case '{case.name}' "
                         f"{case.spatial_shape}; draw the region on this case's voxel grid")
    if region.affine is not None and not np.allclose(region.affine, case.affine, atol=1e-4):
        raise InputError(f"{region.source}: affine differs from case '{case.name}'; the region must be on the "
                         "case's voxel grid (resample it first)")


def to_model_grid(region, case, geometry, slab=None):
    """A region given for a case, as `Explainer.explain` takes it: a RegionMask (or a plain array
    of the case's spatial shape) is checked against the case and mapped through the crop/pad
    (`geometry`) and, for a 2D model, onto its slice (`slab` = (axis, index)); None, "predicted"
    and arrays already on the model's grid pass unchanged."""
    if isinstance(region, np.ndarray) and region.shape == case.spatial_shape:
        region = RegionMask(region)
    if not isinstance(region, RegionMask):
        return region
    check_on_case(region, case)
    inside = geometry.to_model(region.mask != 0)
    if slab is not None:
        inside = np.squeeze(inside, axis=slab[0])
    if not inside.any():
        raise InputError(f"{region.source}: no voxel of it lies in the part of case '{case.name}' the model sees "
                         f"(its {'slice' if slab is not None else 'centre crop'} {geometry.model_shape})")
    return inside
