"""From a case to the model's input: the model's expected grid and the slice a 2D model explains
in a 3D case; plain data in, plain data out. (A region drawn on the case is mapped by
nxrt.region.to_model_grid, with the geometry this module returns.)"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .cases import Case
from .orientation import VIEW_WORLD_AXIS, view_axis
from .preprocess import Geometry, prepare


def model_spatial_shape(explainer) -> tuple[int, ...] | None:
    """The model's spatial input shape: static ONNX input dims, else the card's nxrt.spatial_shape."""
    shape = explainer.model.input_shape
    spatial = explainer.layout.spatial_shape(shape) if shape else ()
    if spatial and all(isinstance(d, int) and d > 0 for d in spatial):
        return tuple(spatial)
    if explainer.card.spatial_shape:
        return tuple(explainer.card.spatial_shape)
    return None


def model_spatial_rank(explainer) -> int | None:
    """How many spatial axes the model's input has (2 or 3), static dims or not."""
    shape = explainer.model.input_shape
    return len(shape) - 2 if shape else None


def model_channels(explainer) -> int | None:
    shape = explainer.model.input_shape
    if not shape:
        return None
    c = explainer.layout.channels(shape)
    return c if isinstance(c, int) else None


def choose_slab(case: Case, model_rank: int | None, spec: str | None) -> tuple[int, int] | None:
    """(axis, index) of the slice a 2D model (`model_rank` spatial axes) explains in a 3D case;
    None when the model's rank is the case's. spec: "axial", "coronal:60", ... or None (axial,
    through the tumour's centre when the case has a segmentation, else through the middle of the
    brain)."""
    spatial = case.spatial_shape
    two_d = model_rank == 2 and len(spatial) == 3
    if not two_d:
        if spec is not None:
            raise InputError(f"--slice is for a 2D model on a 3D case; this model takes {model_rank or len(spatial)}D "
                             f"inputs and the case is {len(spatial)}D: drop --slice")
        return None
    orientation, _, index = (spec or "axial").partition(":")
    if orientation not in VIEW_WORLD_AXIS:
        raise InputError(f"--slice '{spec}': the orientation must be axial, coronal or sagittal "
                         "(e.g. --slice axial:77)")
    axis = view_axis(orientation, case.affine)  # from the affine: whatever the file's voxel order
    n = spatial[axis]
    if not index:
        return axis, _default_slice(case, axis)
    try:
        k = int(index)
    except ValueError:
        raise InputError(f"--slice '{spec}': the index must be an integer (e.g. --slice {orientation}:{n // 2})") \
            from None
    if not 0 <= k < n:
        raise InputError(f"--slice '{spec}': the case has {n} {orientation} slices (0..{n - 1})")
    return axis, k


def _default_slice(case: Case, axis: int) -> int:
    if case.seg is not None and np.any(case.seg):
        return int(round(centre_of_mass(case.seg > 0)[axis]))
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(np.any(case.data[..., 0] != 0, axis=others))
    return int((occupied[0] + occupied[-1]) // 2) if occupied.size else case.spatial_shape[axis] // 2


def assumed_settings(explainer) -> dict[str, str]:
    """What nxrt will assume for cases because neither the card nor a flag says it: the
    Explainer's inferences (task, layout, activation) and the input normalisation ("none": the
    values are fed as stored)."""
    assumed = dict(explainer.assumed)
    if explainer.card.normalize is None:
        assumed["normalize"] = "none"
    return assumed


def assumption_line(model, assumed: dict[str, str]) -> str:
    """One line saying what was assumed for `model` and the `nxrt card` command that fixes it."""
    why = {"task": "from the output's rank", "layout": "from the input's use and shape",
           "activation": "from the last op and the channel count", "normalize": "values fed as stored"}
    said = ", ".join(f"{k}={v} ({why[k]})" for k, v in assumed.items())
    sets = " ".join(f"--set {k}={'zscore|minmax|none' if k == 'normalize' else v}" for k, v in assumed.items())
    return f"{model}: the model card does not say, so nxrt assumed {said}; to fix it: nxrt card {model} {sets}"


def cropped_away(case: Case, geometry) -> float:
    """The share of the scan's nonzero voxels (first channel) that the model's crop leaves out
    (0 for a resampled case: it is seen whole)."""
    if not isinstance(geometry, Geometry):
        return 0.0
    total = case.moments[0].count if case.moments else int(np.count_nonzero(case.data[..., 0]))
    if not total:
        return 0.0
    kept = int(np.count_nonzero(geometry.inside_of_image(case.data[..., 0])))
    return max(0.0, 1.0 - kept / total)


#: a channel whose standard deviation inside the brain is below this share of its mean is constant
CONSTANT = 1e-6


def check_informative(case: Case, normalize: str | None, moments=None) -> None:
    """Refuse a case there is nothing to explain in: every channel zero; with z-score input
    normalisation, a channel that is all zero or has one value in all its brain (nonzero) voxels
    (its z-score is undefined: nxrt would feed the model an arbitrary constant). One line naming
    the file and the channel."""
    from .preprocess import Moments

    def source(c: int) -> str:
        return case.sources[c] if len(case.sources) == len(case.channels) else case.sources[0]

    stats = moments or [Moments.of(case.data[..., c]) for c in range(case.data.shape[-1])]
    if all(m.count == 0 for m in stats):
        where = case.sources[0] if len(set(case.sources)) == 1 else f"case '{case.name}'"
        raise InputError(f"{where}: every voxel of every channel is zero; there is nothing to explain (is it the "
                         "right file?)")
    if normalize != "zscore":
        return
    for c, m in enumerate(stats):
        name = case.channels[c]
        if m.count == 0:
            raise InputError(f"{source(c)}: channel '{name}' is all zero, so its z-score (the model's input "
                             "normalisation) is undefined; give the right file for it")
        mean = m.total / m.count
        std = max(0.0, m.squares / m.count - mean * mean) ** 0.5
        if std <= CONSTANT * abs(mean):
            raise InputError(f"{source(c)}: channel '{name}' has one value ({mean:g}) in all its {m.count} nonzero "
                             "voxels, so its z-score (the model's input normalisation) is undefined; give the "
                             "right file for it")


def model_input(explainer, case: Case, slice_spec: str | None = None, resample: bool | None = None):
    """(x, geometry, slab, lift): the model's input for `case`, its geometry, the (axis, index)
    slice a 2D model explains in a 3D case (else None), and `lift`, which gives a model-space
    batch array of such a 2D model back the slice's axis (of size 1), so that every map of it is
    written into the 3D image like a 3D model's (zero off the slice); None when not needed.
    resample: resample the case into the model's grid instead of cropping it (None: the card's
    nxrt.grid, crop when it is silent)."""
    spatial = model_spatial_shape(explainer)
    slab = choose_slab(case, model_spatial_rank(explainer), slice_spec)
    if slab is not None and spatial is None:  # a 2D model of any size: the slice as it is
        spatial = tuple(n for a, n in enumerate(case.spatial_shape) if a != slab[0])
    moments = case.moments if case.moments and len(case.moments) == case.data.shape[-1] else None
    check_informative(case, explainer.card.normalize, moments)
    resample = explainer.card.grid == "resample" if resample is None else resample
    if resample and slab is not None:
        raise InputError("--resample is for models of the case's dimension; a 2D model explains one slice "
                         "(--slice), which is cropped: drop --resample")
    x, geometry = prepare(case.data, spatial, explainer.layout, explainer.card.normalize, moments, slab, resample)
    if slab is None:
        return x, geometry, None, None
    axis = explainer.layout.spatial_axes(x.ndim)[slab[0]]
    return np.squeeze(x, axis=axis), geometry, slab, lambda a: np.expand_dims(a, axis)


def centre_of_mass(weights: np.ndarray) -> np.ndarray | None:
    """Weighted mean voxel index, from the marginal sums along each axis (no index grids)."""
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        return None
    axes = range(weights.ndim)
    return np.array([weights.sum(axis=tuple(a for a in axes if a != k), dtype=np.float64) @ np.arange(n)
                     for k, n in enumerate(weights.shape)]) / total
