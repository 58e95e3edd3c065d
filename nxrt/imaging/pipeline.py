"""One case end to end: load, preprocess, explain with each method, write every output.

All files of a case are first written into a hidden staging folder beside the final one, which is
renamed into place at the end: a case either has all its outputs or none.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..postprocess import channel_argmax, channel_magnitude, display_scale
from . import figures
from .cases import Case
from .inputs import RegionMask, centre_of_mass, model_channels, model_input, region_in_model_grid
from .orientation import view_of_axis
from .preprocess import InImageGrid
from .writer import save_json, save_nifti

SUMMARY = "summary.json"


def case_finished(out_dir: Path) -> bool:
    return (out_dir / SUMMARY).exists()


def explain_case(explainer, case: Case, methods: Sequence[str], out_root: Path, target=None, region=None,
                 params: dict | None = None, overwrite: bool = False, progress=None, finish_in=None,
                 load_seconds: float = 0.0, slice_spec: str | None = None):
    """Explain `case` with every method and write OUT/<case>/... ; returns the summary dict.

    finish_in: an executor (one worker) to finish the case in the background: the figure, the last
    writes, summary.json and the rename into place run there while the caller starts the next case,
    and the return value is a Future of the summary (a cohort's per-case overhead then overlaps the
    next explanation). Without it everything is done before returning. load_seconds: the time the
    caller spent reading the case, reported in summary.json with the preprocessing. slice_spec:
    the slice a 2D model explains in a 3D case (`choose_slab`). region: None, "predicted", a
    `RegionMask` on the case's image grid (or a plain array there), or an array on the model's
    output grid as `Explainer.explain` takes it.
    """
    from ..registry import get_method

    # parameters are looked up by each method's own name, whatever alias the caller used
    methods = list(dict.fromkeys(get_method(m).name for m in methods))
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    final = Path(out_root) / case.name
    if final.exists() and not overwrite:
        raise InputError(f"{final} exists; pass --overwrite to replace it or --resume to skip finished cases")
    timings = {}
    t0 = time.perf_counter()
    want = model_channels(explainer)
    if want is not None and case.data.shape[-1] != want:
        raise InputError(f"case '{case.name}' has {case.data.shape[-1]} channels but the model input takes {want}")
    x, geometry, slab, lift = model_input(explainer, case, slice_spec)
    if isinstance(region, np.ndarray) and region.shape == case.spatial_shape:
        region = RegionMask(region)
    if isinstance(region, RegionMask):
        region = region_in_model_grid(region, case, geometry, slab)
    timings["load_s"] = load_seconds
    timings["preprocess_s"] = time.perf_counter() - t0
    timings["load_and_preprocess_s"] = load_seconds + timings["preprocess_s"]
    stage = Path(out_root) / f".{case.name}.partial{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        finish = _run(explainer, case, methods, x, geometry, stage, target, region, params or {}, timings, progress,
                      slab, lift)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

    def complete() -> dict:
        try:
            summary = finish()
            _commit(stage, final)
            return summary
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    return complete() if finish_in is None else finish_in.submit(complete)


def _commit(stage: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(explainer, case, methods, x, geometry, stage, target, region, params, timings, progress, slab, lift):
    """Explain with every method; returns the function that finishes the case (figure, last writes,
    summary.json). NIfTI files are compressed and written on a background thread while the next
    method runs; every write is waited for before the summary is written."""
    writer = ThreadPoolExecutor(1)
    pending = [writer.submit(figures.warm_up)]
    try:
        summary, figure = _explain_all(explainer, case, methods, x, geometry, stage, target, region, params,
                                       timings, progress, lambda *a: pending.append(writer.submit(save_nifti, *a)),
                                       slab, lift)
    except BaseException:
        writer.shutdown(wait=True)
        raise

    def finish() -> dict:
        try:
            t = time.perf_counter()
            figure()
            timings["figure_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for job in pending:
                job.result()
            timings["finish_writes_s"] = time.perf_counter() - t
        finally:
            writer.shutdown(wait=True)
        summary["timings"] = {k: round(v, 4) for k, v in timings.items()}
        save_json(stage / SUMMARY, summary)
        return summary

    return finish


def _explain_all(explainer, case, methods, x, geometry, stage, target, region, params, timings, progress,
                 write, slab=None, lift=None) -> tuple[dict, Callable[[], None]]:
    lift = lift or (lambda a: a)
    # The first method runs before the prediction: when its passes evaluate the model at x itself
    # (every gradient method but IG/SmoothGrad, Grad-CAM, occlusion), the model's output comes
    # with them and no separate forward pass is run -- on a BraTS case that is ~3 s of ~10.
    first = None
    if methods:
        if progress:
            progress(methods[0])
        t = time.perf_counter()
        attr = explainer.explain(x, methods[0], target=target, region=region, keep_forward=True,
                                 **params.get(methods[0], {}))
        first = (attr, dict(explainer.info), time.perf_counter() - t)
    t = time.perf_counter()
    shared = explainer.last_forward if first is not None else None
    output, scores = shared if shared is not None else explainer.predict_and_score(x, region=region)
    if explainer.task == "segmentation":
        output = lift(output)
    timings["forward_s"] = time.perf_counter() - t
    summary = {"case": case.name, "sources": case.sources, "channels": case.channels, "task": explainer.task,
               "model_input_shape": list(x.shape), "image_shape": list(case.spatial_shape),
               "forward_pass": f"shared with {first[1]['method']}" if shared is not None else "separate",
               "methods": {}}
    if slab is not None:
        summary["slice"] = {"orientation": view_of_axis(slab[0], case.affine), "voxel_axis": slab[0],
                            "index": slab[1]}
    pred_mask = None  # model space, inside the image (see Geometry.inside)
    image_voxels = int(np.prod(case.spatial_shape))
    # the display map's percentile runs over what was explained: the image, or a 2D model's slice
    shown_voxels = image_voxels if slab is None else image_voxels // case.spatial_shape[slab[0]]
    if explainer.task == "segmentation":
        t = time.perf_counter()
        out = output[0]
        ch = 0 if explainer.layout == "channels_first" else -1
        labels_model = channel_argmax(out, ch)
        values = explainer.card.extra.get("label_values")
        if values:
            lut = np.array([int(v) for v in values.split(",")], np.int16)
            labels_model = lut[labels_model]
        write(stage / "prediction.nii.gz", InImageGrid(labels_model, geometry), case.affine, case.header)
        inside_labels = geometry.inside(labels_model)
        pred_mask = inside_labels > 0
        found, counts = np.unique(inside_labels, return_counts=True)
        voxels = {int(v): int(n) for v, n in zip(found, counts, strict=True)}
        voxels[0] = voxels.get(0, 0) + image_voxels - inside_labels.size  # the image outside the crop
        summary["prediction"] = {"voxels_per_label": dict(sorted(voxels.items())), "label_names": explainer.card.labels}
        timings["prediction_s"] = time.perf_counter() - t
    else:
        probs = scores[0]
        names = explainer.card.labels or [str(i) for i in range(len(probs))]
        summary["prediction"] = {"class": int(np.argmax(probs)), "label": names[int(np.argmax(probs))]
                                 if len(names) == len(probs) else str(int(np.argmax(probs)))}
    summary["scores"] = [float(s) for s in scores[0]]
    tumour = None
    if case.seg is not None:
        tumour = geometry.inside_of_image(case.seg) > 0  # the true tumour, on the model's crop
        tumour_share = float(np.count_nonzero(case.seg) / max(1, _brain_voxels(case.data)))
    origin = np.array(geometry.image_origin(), np.float64)
    if target is None and explainer.task == "classification":
        target = int(np.argmax(scores[0]))  # what each method would resolve again with a forward pass
    maps = {}
    for k, method in enumerate(methods):
        if k == 0:
            attr, info, seconds = first
        else:
            if progress:
                progress(method)
            t = time.perf_counter()
            attr = explainer.explain(x, method, target=target, region=region, **params.get(method, {}))
            seconds = time.perf_counter() - t
            info = dict(explainer.info)
        attr = lift(attr)
        t = time.perf_counter()
        # Everything is computed on the model's crop (4x smaller than a BraTS grid); the image-grid
        # files are produced from it, block by block, on the writer thread (InImageGrid).
        sample = attr[0].astype(np.float32, copy=False)
        channels_last = np.moveaxis(sample, 0, -1) if explainer.layout == "channels_first" else sample
        name = info["method"]
        write(stage / f"{name}.nii.gz", InImageGrid(channels_last, geometry), case.affine, case.header)
        model_magnitude = channel_magnitude(sample, 0 if explainer.layout == "channels_first" else -1)
        magnitude = geometry.inside(model_magnitude)  # the image outside the crop has none
        # the percentile is taken over the whole image (a 2D model's whole slice), as DESIGN.md
        # defines the display map
        top = display_scale(magnitude, extra_zeros=shown_voxels - magnitude.size)
        dmap = InImageGrid(np.minimum(model_magnitude, top) / np.float32(top), geometry)
        write(stage / f"{name}_map.nii.gz", dmap, case.affine, case.header)
        maps[name] = dmap
        ijk = centre_of_mass(magnitude)
        entry = {"target": info["targets"][0], "params": _plain(info["params"]), "seconds": round(seconds, 4),
                 "session_build_seconds": round(info.get("build_seconds", 0.0), 4),
                 "centroid_mm": None if ijk is None else
                 [round(float(v), 3) for v in (case.affine @ np.append(ijk + origin, 1.0))[:3]]}
        if "layer" in info:
            entry["layer"] = info["layer"]
        total = float(magnitude.sum(dtype=np.float64))
        if pred_mask is not None and total > 0:
            entry["share_in_predicted_tumour"] = float(magnitude[pred_mask].sum(dtype=np.float64) / total)
        if tumour is not None and total > 0:
            entry["share_in_true_tumour"] = float(magnitude[tumour].sum(dtype=np.float64) / total)
            entry["true_tumour_share_of_brain"] = tumour_share
        entry["write_seconds"] = round(time.perf_counter() - t, 4)
        summary["methods"][name] = entry
    title = f"{case.name}: {explainer.task}, target {summary['methods'][next(iter(maps))]['target']}" \
        if maps else case.name
    pred_image = None if pred_mask is None else InImageGrid(labels_model > 0, geometry)

    def figure():
        center = list(_figure_center(case, pred_mask, origin, maps))
        if slab is not None:  # the explained slice is the one shown across the slab's axis
            center[slab[0]] = slab[1]
        bg = case.channels.index("flair") if "flair" in case.channels else 0
        contour = case.seg > 0 if case.seg is not None else pred_image
        views = figures.ORIENTATIONS if slab is None else [view_of_axis(slab[0], case.affine)]
        figures.overview(stage / "overview.png", case.data[..., bg], maps, center, title=title, contour=contour,
                         spacing=case.spacing, views=views, affine=case.affine)

    return summary, figure


def _brain_voxels(data: np.ndarray) -> int:
    """Voxels where any channel is nonzero ([*spatial, C]; a channel at a time, no 4D temporary)."""
    brain = data[..., 0] != 0
    for c in range(1, data.shape[-1]):
        brain |= data[..., c] != 0
    return int(np.count_nonzero(brain))


def _plain(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        out[k] = v.tolist() if isinstance(v, np.ndarray) and v.size <= 16 else \
            (f"array{list(v.shape)}" if isinstance(v, np.ndarray) else v)
    return out


def _figure_center(case: Case, pred_mask, origin: np.ndarray, maps) -> tuple[float, ...]:
    """Slices through the tumour (true, else predicted), else through the first map's centroid.
    pred_mask: on the model's crop, whose first voxel is image voxel `origin`."""
    if case.seg is not None and np.any(case.seg):
        return tuple(centre_of_mass(case.seg > 0))
    if pred_mask is not None and pred_mask.any():
        return tuple(centre_of_mass(pred_mask) + origin)
    if maps:
        first = next(iter(maps.values()))
        ijk = centre_of_mass(first.geometry.inside(first.volume))
        if ijk is not None:
            return tuple(ijk + origin)
    return tuple(s / 2 for s in case.spatial_shape)
