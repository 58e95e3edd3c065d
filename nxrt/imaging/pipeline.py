"""One case through one model: preprocess, explain with each method, and compute what the outputs
show (prediction labels, display maps, the numbers of summary.json). Nothing is written here:
`explain_case` returns a `CaseResult`; the writers in `outputs.py` turn it into files and
`nxrt/cohort.py` stages and commits them.

Results are announced as they become ready (`on_ready`): a writer can then compress one method's
NIfTI files on a background thread while the next method runs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import findings
from ..case_folder import plain
from ..errors import InputError, NxrtWarning
from ..evaluation.features import tumour_estimate
from ..explanation import Explanation
from ..postprocess import channel_argmax, channel_magnitude, display_scale
from ..region import to_model_grid
from ..registry import canonical
from . import figures
from .cases import Case
from .inputs import assumed_settings, centre_of_mass, cropped_away, model_channels, model_input
from .orientation import view_of_axis
from .preprocess import Geometry, InImageGrid

#: the share of a scan's nonzero voxels the crop may leave out before a case warns
CROP_LOSS = 0.001
#: seconds between two progress reports inside one method
PROGRESS_EVERY = 5.0


@dataclass
class MethodMaps:
    """One method's result on a case: its Explanation, and views of it on the case's image grid
    (computed lazily, a block at a time, from the model's crop: `InImageGrid`)."""

    name: str
    explanation: Explanation
    raw: InImageGrid  # the attribution, channels last: one volume per channel
    display: InImageGrid  # |a| summed over channels, 99th-percentile clip, 0..1
    entry: dict  # its part of summary.json


@dataclass
class FigureInputs:
    """What the overview figure shows: the background scan, the centre of the slices, views."""

    background: np.ndarray
    center: list[float]
    title: str  # lines: the case, the prediction, what was explained
    contour: np.ndarray | InImageGrid | None  # the true tumour (the case's _seg)
    views: Sequence[str]
    predicted: InImageGrid | None = None  # the predicted tumour (a segmenter's labels > 0)
    notes: dict = field(default_factory=dict)  # {method: its settings, one short line}


@dataclass
class CaseResult:
    """Everything `explain_case` computed for a case, as values."""

    case: Case
    geometry: Geometry
    slab: tuple[int, int] | None
    summary: dict  # summary.json without the output timings
    labels: InImageGrid | None = None  # predicted labels on the image grid (segmentation)
    methods: dict[str, MethodMaps] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    figure: FigureInputs | None = None
    kept_maps: dict = field(default_factory=dict)  # display maps of methods a merged case folder keeps


def explain_case(explainer, case: Case, methods: Sequence[str], target=None, region=None,
                 params: dict | None = None, slice_spec: str | None = None, progress=None,
                 on_ready: Callable[[str, CaseResult, str | None], None] | None = None,
                 load_seconds: float = 0.0, warn: Callable[[str], None] | None = None,
                 resample: bool | None = None, metrics: Sequence[str] | None = None,
                 metric_params: dict | None = None) -> CaseResult:
    """Explain `case` with every method; returns the CaseResult (writes nothing).

    params: {method: {param: value}} (aliases accepted). region: None, "predicted", a
    `region.RegionMask` on the case's image grid (or a plain array there), or an array on the
    model's output grid as `Explainer.explain` takes it. slice_spec: the slice a 2D model explains
    in a 3D case (`inputs.choose_slab`). progress(method): called before each method. on_ready(event,
    result, name): called with "prediction" once the labels exist, and "method" (with its name)
    after each method. load_seconds: the caller's time reading the case, reported with the
    preprocessing. warn(line): told each warning of a method's result ("<case>: <method>: ..."),
    which summary.json also records under the method's "warnings". resample: resample the case into
    the model's grid instead of centre-cropping it (None: the card's nxrt.grid; see inputs.model_input).
    metrics: evaluate each map with these metrics (nxrt.evaluation; [] = the default set; None: no
    evaluation) and estimate the tumour it points at; both go into the method's summary entry
    ("metrics", "tumour_estimate"). The truth mask is the case's _seg on the model's grid; without
    one, the metrics that need a mask are left out (said once). metric_params: {metric: {param: value}}.
    """
    methods = canonical(methods)
    params = {canonical([k])[0]: v for k, v in (params or {}).items()}
    started = _utc_now()
    t0 = time.perf_counter()
    want = model_channels(explainer)
    if want is not None and case.data.shape[-1] != want:
        raise InputError(f"case '{case.name}' has {case.data.shape[-1]} channels but the model input takes {want}")
    x, geometry, slab, lift = model_input(explainer, case, slice_spec, resample)
    lost = cropped_away(case, geometry) if slab is None else 0.0
    if lost > CROP_LOSS:
        if warn:
            warn(f"{case.name}: the model's centre crop {'x'.join(map(str, geometry.model_shape))} of the "
                 f"{'x'.join(map(str, case.spatial_shape))} scan leaves out {lost:.1%} of its nonzero voxels; "
                 "give --resample to resample the case into the model's grid instead (card: grid=resample)")
    region = to_model_grid(region, case, geometry, slab)
    lift = lift or (lambda a: a)
    result = CaseResult(case, geometry, slab, {})
    timings = result.timings
    timings["load_s"] = load_seconds
    timings["preprocess_s"] = time.perf_counter() - t0
    timings["load_and_preprocess_s"] = load_seconds + timings["preprocess_s"]

    def run(method: str) -> tuple[Explanation, float]:
        if progress:
            progress(method)
        t = time.perf_counter()
        shown = [t]

        def inside(done: int, total: int, unit: str) -> None:  # at most every PROGRESS_EVERY seconds
            now = time.perf_counter()
            if progress and done < total and now - shown[0] >= PROGRESS_EVERY:
                shown[0] = now
                left = (now - t) / done * (total - done)
                progress(f"{method} {done}/{total} {unit}, about {left:.0f} s left in it")

        with warnings.catch_warnings():  # they are in the Explanation, and said through `warn`
            warnings.simplefilter("ignore", NxrtWarning)
            e = explainer.explain(x, method, target=target, region=region, progress=inside,
                                  **params.get(method, {}))
        return e, time.perf_counter() - t

    # The first method runs before the prediction: when its passes evaluate the model at x itself
    # (every gradient method but IG/SmoothGrad, Grad-CAM, occlusion), the model's output comes
    # with them and no separate forward pass is run -- on a BraTS case that is ~3 s of ~10.
    first = run(methods[0]) if methods else None
    t = time.perf_counter()
    shared = first is not None and first[0].output is not None
    output, scores = (first[0].output, first[0].scores) if shared else explainer.predict_and_score(x, region=region)
    timings["forward_s"] = time.perf_counter() - t
    summary = result.summary
    summary.update({"case": case.name, "sources": case.sources, "channels": case.channels, "task": explainer.task,
                    "provenance": provenance(explainer, started),
                    "model_input_shape": list(x.shape), "image_shape": list(case.spatial_shape),
                    "assumed": assumed_settings(explainer), "cropped_away": round(lost, 6),
                    "grid": "crop" if isinstance(geometry, Geometry) else "resample",
                    "forward_pass": f"shared with {first[0].method}" if shared else "separate", "methods": {}})
    if slab is not None:
        summary["slice"] = {"orientation": view_of_axis(slab[0], case.affine), "voxel_axis": slab[0],
                            "index": slab[1]}
    stats = _CaseStats(explainer, case, geometry, slab)
    truth = None  # the true tumour on the model's grid, for the metrics that need a mask
    if metrics is not None and case.seg is not None:
        truth = geometry.to_model(case.seg > 0)
        truth = np.squeeze(truth, axis=slab[0]) if slab is not None else truth
    if explainer.task == "segmentation":
        t = time.perf_counter()
        labels_model = stats.predict(lift(output)[0], summary)
        result.labels = InImageGrid(labels_model, geometry)
        timings["prediction_s"] = time.perf_counter() - t
        if on_ready:
            on_ready("prediction", result, None)
    else:
        probs = scores[0]
        names = explainer.card.labels or [str(i) for i in range(len(probs))]
        summary["prediction"] = {"class": int(np.argmax(probs)), "label": names[int(np.argmax(probs))]
                                 if len(names) == len(probs) else str(int(np.argmax(probs))),
                                 "label_names": explainer.card.labels}
    summary["scores"] = [float(s) for s in scores[0]]
    if target is None and explainer.task == "classification":
        target = int(np.argmax(scores[0]))  # what each method would resolve again with a forward pass
    for k, method in enumerate(methods):
        e, seconds = first if k == 0 else run(method)
        t = time.perf_counter()
        if k == 0 and shared:  # the prediction holds what the output was needed for
            e = replace(e, output=None, scores=None)
        maps = stats.maps(e, lift(e.attribution)[0], seconds)
        maps.entry["write_seconds"] = round(time.perf_counter() - t, 4)
        result.methods[maps.name] = maps
        summary["methods"][maps.name] = maps.entry
        for line in maps.entry.get("warnings", []):
            if warn:
                warn(f"{case.name}: {e.method}: {line}")
        if metrics is not None:
            t = time.perf_counter()
            maps.entry["metrics"] = _evaluated(explainer, x, e, metrics, metric_params, truth, region,
                                               warn if k == 0 else None, case)  # (said once per case)
            maps.entry["tumour_estimate"] = tumour_estimate(np.asarray(maps.display), case.affine, case.seg)
            maps.entry["evaluation_seconds"] = round(time.perf_counter() - t, 4)
        if on_ready:
            on_ready("method", result, maps.name)
    result.figure = stats.figure_inputs(result)
    return result


class _CaseStats:
    """The numbers and maps of one case, computed on the model's crop (4x smaller than a BraTS
    grid); image-grid views are produced from it block by block (InImageGrid)."""

    def __init__(self, explainer, case: Case, geometry: Geometry, slab):
        self.case, self.geometry, self.slab = case, geometry, slab
        self.layout = explainer.layout
        self.spec = explainer.spec
        self.card = explainer.card
        self.task = explainer.task
        self.pred_mask = None  # model space, inside the image (see Geometry.inside)
        self.labels_model = None
        self.image_voxels = int(np.prod(case.spatial_shape))
        # the display map's percentile runs over what was explained: the image, or a 2D model's slice
        self.shown_voxels = self.image_voxels if slab is None else self.image_voxels // case.spatial_shape[slab[0]]
        self.tumour = self.tumour_share = None
        if case.seg is not None:
            self.tumour = geometry.inside_of_image(case.seg) > 0  # the true tumour, on the model's crop
            self.tumour_share = float(np.count_nonzero(case.seg) / max(1, _brain_voxels(case.data)))
        self.resampled = not isinstance(geometry, Geometry)

    def predict(self, out: np.ndarray, summary: dict) -> np.ndarray:
        """Labels of one sample's segmentation output (model space) and the summary's counts.
        Exclusive (softmax) channels: the argmax, one label map. Independent (sigmoid / logit)
        channels: each thresholded (p > 0.5, logit > 0); one channel gives a 0/1 map, several a
        0/1 volume per channel (they may overlap, as BraTS' ET/TC/WT regions do)."""
        spec = self.spec
        if spec.multilabel:
            above = self.layout.to_channels_last(out > spec.threshold(), batch=False)  # [*spatial, C]
            inside = self.geometry.inside(above)
            self.pred_mask = inside.any(axis=-1)
            labels_model = above[..., 0].astype(np.int16) if above.shape[-1] == 1 else above.astype(np.uint8)
            names = self.card.labels if self.card.labels and len(self.card.labels) == above.shape[-1] else \
                [str(c) for c in range(above.shape[-1])]
            rule = "p > 0.5" if spec.activation == "sigmoid" else "logit > 0"
            summary["prediction"] = {"rule": f"{rule} per channel ({spec.activation})",
                                     "voxels_per_channel": {n: int(np.count_nonzero(inside[..., c]))
                                                            for c, n in enumerate(names)},
                                     "label_names": self.card.labels}
            self.labels_model = above.any(axis=-1)
            return labels_model
        labels_model = channel_argmax(out, self.layout.channel_axis(out.ndim, batch=False))
        values = self.card.extra.get("label_values")
        if values:
            lut = np.array([int(v) for v in values.split(",")], np.int16)
            labels_model = lut[labels_model]
        inside_labels = self.geometry.inside(labels_model)
        self.pred_mask = inside_labels > 0
        self.labels_model = labels_model
        found, counts = np.unique(inside_labels, return_counts=True)
        voxels = {int(v): int(n) for v, n in zip(found, counts, strict=True)}
        if self.resampled:  # counted on the image grid the labels are written on
            found, counts = np.unique(self.geometry.to_image(labels_model), return_counts=True)
            voxels = {int(v): int(n) for v, n in zip(found, counts, strict=True)}
        voxels[0] = voxels.get(0, 0) + self.geometry.uncovered_voxels()  # the image outside the crop
        summary["prediction"] = {"rule": "argmax over the channels (softmax)",
                                 "voxels_per_label": dict(sorted(voxels.items())), "label_names": self.card.labels}
        if values:  # the label value each channel is written as (BraTS: 0, 1, 2, 4)
            summary["prediction"]["label_values"] = [int(v) for v in values.split(",")]
        return labels_model

    def maps(self, e: Explanation, sample: np.ndarray, seconds: float) -> MethodMaps:
        sample = sample.astype(np.float32, copy=False)
        geometry = self.geometry
        raw = InImageGrid(self.layout.to_channels_last(sample, batch=False), geometry)
        model_magnitude = channel_magnitude(sample, self.layout.channel_axis(sample.ndim, batch=False))
        magnitude = geometry.inside(model_magnitude)  # the image outside the crop has none
        # the percentile is taken over the whole image (a 2D model's whole slice), as DESIGN.md
        # defines the display map
        extra = self.shown_voxels - magnitude.size if self.slab is not None else geometry.uncovered_voxels()
        top = display_scale(magnitude, extra_zeros=max(0, extra))
        display = InImageGrid(np.minimum(model_magnitude, top) / np.float32(top), geometry)
        ijk = centre_of_mass(magnitude)
        names = self.card.labels
        entry = {"target": e.targets[0],
                 "target_labels": [names[t] for t in e.targets[0]] if names and max(e.targets[0]) < len(names)
                 else None, "params": plain(e.params), "seconds": round(seconds, 4),
                 "session_build_seconds": round(e.build_seconds, 4),
                 "centroid_mm": None if ijk is None else
                 [round(float(v), 3) for v in (self.case.affine @ np.append(geometry.image_index(ijk), 1.0))[:3]]}
        if e.layer is not None:
            entry["layer"] = e.layer
        for key in ("delta", "delta_relative"):  # IG's completeness error
            if key in e.extras:
                entry[key] = float(np.asarray(e.extras[key]).reshape(-1)[0])
        total = float(magnitude.sum(dtype=np.float64))
        said = list(e.warnings)
        if total == 0:  # a black figure must not look like "nothing here matters" by accident
            said.append("the map is zero everywhere: the explained score does not change with the input here "
                        "(a dead target or layer?); nothing to show")
        if said:
            entry["warnings"] = said
        if self.pred_mask is not None and total > 0:
            entry["share_in_predicted_tumour"] = float(magnitude[self.pred_mask].sum(dtype=np.float64) / total)
        if self.tumour is not None and total > 0:
            entry["share_in_true_tumour"] = float(magnitude[self.tumour].sum(dtype=np.float64) / total)
            entry["true_tumour_share_of_brain"] = self.tumour_share
        return MethodMaps(e.method, e, raw, display, entry)

    def figure_inputs(self, result: CaseResult) -> FigureInputs:
        case, slab = self.case, self.slab
        maps = {name: m.display for name, m in result.methods.items()}
        center = list(_figure_center(case, self.pred_mask, self.geometry, maps))
        if slab is not None:  # the explained slice is the one shown across the slab's axis
            center[slab[0]] = slab[1]
        bg = case.channels.index("flair") if "flair" in case.channels else 0
        pred_image = None if self.pred_mask is None else InImageGrid(self.labels_model > 0, self.geometry)
        views = figures.ORIENTATIONS if slab is None else [view_of_axis(slab[0], case.affine)]
        summary = result.summary
        lines = [f"{case.name} ({case.channels[bg]} shown)", findings.prediction_line(summary),
                 findings.explained_line(summary)]
        notes = {name: settings_note(m.get("params") or {}) for name, m in summary["methods"].items()}
        return FigureInputs(case.data[..., bg], center, "\n".join(t for t in lines if t),
                            case.seg > 0 if case.seg is not None else None, views, pred_image, notes)


def settings_note(params: dict, most: int = 44) -> str:
    """A method's settings as one short line for a figure ('steps 32, rule gausslegendre')."""
    text = findings.settings_line(params)
    return text if len(text) <= most else text[:most - 1] + "\u2026"


def _evaluated(explainer, x, e, metrics, metric_params, truth, region, warn, case) -> dict:
    """The metrics of one map, JSON-ready (NaN -> None, curves as lists); without a truth mask the
    metrics that need one are left out, said once per case."""
    from ..evaluation import evaluate
    from ..evaluation.metric import default_metrics, get_metric

    names = list(metrics) or default_metrics(have_mask=truth is not None, have_method=True)
    if truth is None:
        dropped = [m for m in names if "mask" in get_metric(m).needs]
        names = [m for m in names if m not in dropped]
        if dropped and warn:
            warn(f"{case.name}: no _seg (true tumour) given: {', '.join(dropped)} left out; give --mask or a _seg file")
    params = {m: v for m, v in (metric_params or {}).items() if m in names}
    values = evaluate(explainer, x, e, metrics=names, mask=truth, region=region, **params) if names else {}
    return {k: _json_value(v) for k, v in values.items()}


def _json_value(v):
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0:
        return None if not np.isfinite(arr) else float(arr)
    return [None if not np.isfinite(a) else float(a) for a in arr.ravel()]


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(explainer, started: str) -> dict:
    """Which model, which software, which provider and which command made a case's outputs."""
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    import onnxruntime

    model = explainer.model
    return {"model": {"path": str(Path(model.source).resolve()) if model.source else None,
                      "sha256": model.file_sha256, "content_digest": model.digest,
                      "card": explainer.card.to_props()},
            "versions": {"nxrt": installed("nxrt"), "onnxruntime": onnxruntime.__version__,
                         "onnx": installed("onnx"), "numpy": np.__version__, "nibabel": installed("nibabel")},
            "provider": explainer.providers[0], "command": shlex.join(["nxrt", *sys.argv[1:]]),
            "started_utc": started}


def _brain_voxels(data: np.ndarray) -> int:
    """Voxels where any channel is nonzero ([*spatial, C]; a channel at a time, no 4D temporary)."""
    brain = data[..., 0] != 0
    for c in range(1, data.shape[-1]):
        brain |= data[..., c] != 0
    return int(np.count_nonzero(brain))


def _figure_center(case: Case, pred_mask, geometry, maps) -> tuple[float, ...]:
    """Slices through the tumour (true, else predicted), else through the first map's centroid.
    pred_mask: on the model's grid, inside the image (`geometry.inside`)."""
    if case.seg is not None and np.any(case.seg):
        return tuple(centre_of_mass(case.seg > 0))
    if pred_mask is not None and pred_mask.any():
        return tuple(geometry.image_index(centre_of_mass(pred_mask)))
    if maps:
        first = next(iter(maps.values()))
        ijk = centre_of_mass(first.geometry.inside(first.volume))
        if ijk is not None:
            return tuple(geometry.image_index(ijk))
    return tuple(s / 2 for s in case.spatial_shape)
