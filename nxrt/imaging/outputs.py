"""The files of a case: one writer class per output kind, fed a `pipeline.CaseResult`.

    OUT/<case>/<method>.nii.gz      RawMaps         raw attribution, one volume per channel
    OUT/<case>/<method>_map.nii.gz  DisplayMaps     |a| over channels, 99th-percentile clip, 0..1
    OUT/<case>/prediction.nii.gz    PredictionMap   predicted labels (segmentation)
    OUT/<case>/overview.png         OverviewFigure  the scan and each method x axial/coronal/sagittal
    OUT/<case>/report.html          ReportPage      the case as an offline page (and thumbnail.png)
    OUT/<case>/summary.json         SummaryJSON     written last: a case with it is complete

Every map overlays the scan: the case's own grid, affine and header. A new format is one new
class with the hooks it needs: `prediction` (the labels exist), `method` (one method is done),
`case` (every method is done) and `close` (every other file is written). `CaseWriter` runs them:
NIfTI files compress on a background thread while the next method computes; `finish` draws the
figures, waits for every write, then lets `close` run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..postprocess import display_scale
from . import figures
from .pipeline import CaseResult, MethodMaps
from .writer import save_json, save_nifti

SUMMARY = "summary.json"
#: joins a method and an input channel in a per-modality column's name ("vanilla \u00b7 flair")
CHANNEL_MARK = "\u00b7"
Submit = Callable[..., Future]


class Output:
    """One kind of output. Hooks get the result so far, the folder to write into and `submit`
    (runs a function on the writer's background thread). `timing`: when set, the seconds the
    `case` hook took are reported in summary.json as timings[`timing`_s]."""

    timing: str | None = None

    def prediction(self, result: CaseResult, folder: Path, submit: Submit) -> None:
        pass

    def method(self, result: CaseResult, maps: MethodMaps, folder: Path, submit: Submit) -> None:
        pass

    def case(self, result: CaseResult, folder: Path) -> None:
        pass

    def close(self, result: CaseResult, folder: Path) -> None:
        pass


class RawMaps(Output):
    def method(self, result, maps, folder, submit):
        case = result.case
        submit(save_nifti, folder / f"{maps.name}.nii.gz", maps.raw, case.affine, case.header)


class DisplayMaps(Output):
    def method(self, result, maps, folder, submit):
        case = result.case
        submit(save_nifti, folder / f"{maps.name}_map.nii.gz", maps.display, case.affine, case.header)


class PredictionMap(Output):
    def prediction(self, result, folder, submit):
        case = result.case
        submit(save_nifti, folder / "prediction.nii.gz", result.labels, case.affine, case.header)


class OverviewFigure(Output):
    """overview.png. colormap: "ember" (perceptually uniform, the default) or "jet" (the paper's);
    convention: "neurological" or "radiological"; per_modality: one column per method and input
    channel, each over its own scan, all channels of a method on one scale (the 99th percentile of
    |attribution| over every channel), instead of one column per method (|a| summed over channels)."""

    timing = "figure"

    def __init__(self, colormap: str = "ember", convention: str = "neurological", per_modality: bool = False):
        self.colormap, self.convention, self.per_modality = colormap, convention, per_modality

    def case(self, result, folder):
        f, case = result.figure, result.case
        maps = {}
        for name, display in case_maps(result).items():
            if self.per_modality and name in result.methods:
                maps.update(_per_channel(name, result.methods[name].raw, case))
            else:
                maps[name] = display
        # a method's settings under each of its columns ("vanilla \u00b7 flair" is vanilla's)
        notes = {col: f.notes.get(col.split(f" {CHANNEL_MARK} ")[0], "") for col in maps}
        figures.overview(folder / "overview.png", f.background, maps, f.center, title=f.title, contour=f.contour,
                         spacing=case.spacing, views=f.views, affine=case.affine, predicted=f.predicted,
                         notes=notes, colormap=self.colormap, convention=self.convention)


class _ChannelMap:
    """|a| of one channel of a raw map on the image grid, over `top`, clipped to 1: sliced lazily
    like the display maps (the figure reads three slices)."""

    def __init__(self, raw, channel: int, top: float):
        self.raw, self.channel, self.top = raw, channel, np.float32(top)
        self.shape = tuple(raw.shape[:3])

    def __getitem__(self, key):
        return np.minimum(np.abs(np.asarray(self.raw[key])[..., self.channel]), self.top) / self.top


def _per_channel(name: str, raw, case) -> dict:
    """{"<method> \u00b7 <channel>": (|a| of that channel on one scale for the method, that channel's scan)}."""
    top = display_scale(np.abs(raw.volume if hasattr(raw, "volume") else np.asarray(raw)))  # (the model's crop)
    if raw.shape[-1] != len(case.channels):  # a map with no channel axis of its own (Grad-CAM): one column
        return {name: _ChannelMap(raw, 0, top)}
    return {f"{name} {CHANNEL_MARK} {channel}": (_ChannelMap(raw, k, top), case.data[..., k])
            for k, channel in enumerate(case.channels)}


def case_maps(result) -> dict:
    """{method: display map} of every method the case's summary lists, the methods an earlier run
    left in a merged case folder included (read lazily from their files)."""
    maps = {}
    for name in result.summary.get("methods", result.methods):
        if name in result.methods:
            maps[name] = result.methods[name].display
        elif name in result.kept_maps:
            maps[name] = result.kept_maps[name]
    return maps


class ReportPage(Output):
    """report.html (`nxrt.report.case_page`: the scan and every map in three linked views, offline)
    and thumbnail.png (the case's picture in a cohort's index.html)."""

    timing = "report"

    def case(self, result, folder):
        from ..report import case_page

        f, case = result.figure, result.case
        maps = case_maps(result)
        scans = {channel: case.data[..., k] for k, channel in enumerate(case.channels)}
        truth = case.seg > 0 if case.seg is not None else None
        predicted = None if f.predicted is None else np.asarray(f.predicted)
        case_page.write(folder / "report.html", result.summary, scans, maps, case.affine, case.spacing, truth,
                        predicted)
        first = next(iter(maps.values()), None)
        figures.thumbnail(folder / "thumbnail.png", f.background, first, f.center, case.spacing, case.affine,
                          truth if truth is not None else predicted)


class SummaryJSON(Output):
    def close(self, result, folder):
        from .pipeline import _utc_now

        summary = dict(result.summary)
        if "provenance" in summary:
            summary["provenance"] = {**summary["provenance"], "finished_utc": _utc_now()}
        summary["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
        save_json(folder / SUMMARY, summary)


def kept_display_maps(folder: Path, methods) -> dict:
    """The display maps (DisplayMaps' files) of methods an existing case folder keeps, read
    lazily (the figure touches three slices of each)."""
    import nibabel as nib

    found = {}
    for name in methods:
        path = Path(folder) / f"{name}_map.nii.gz"
        if path.exists():
            found[name] = nib.load(str(path)).dataobj
    return found


def default_outputs(colormap: str = "ember", convention: str = "neurological", per_modality: bool = False,
                    report: bool = True) -> tuple[Output, ...]:
    """Every output of a case, the figure drawn as asked; report=False leaves out report.html and
    thumbnail.png (and so a cohort's index.html)."""
    pages = (ReportPage(),) if report else ()
    return (RawMaps(), DisplayMaps(), PredictionMap(), OverviewFigure(colormap, convention, per_modality), *pages,
            SummaryJSON())


DEFAULT_OUTPUTS: tuple[Output, ...] = default_outputs()


class CaseWriter:
    """Writes one case's outputs into `folder` as its results become ready.

    Pass it as `explain_case(..., on_ready=writer)`; then `finish(result)` (on any thread) runs
    the `case` hooks, waits for every background write and runs the `close` hooks; `abort()`
    stops the background thread after a failure (the caller removes the folder)."""

    def __init__(self, folder: Path, outputs: Sequence[Output] = DEFAULT_OUTPUTS):
        self.folder = Path(folder)
        self.outputs = tuple(outputs)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nxrt-writer")
        self._pending = [self._pool.submit(figures.warm_up)]

    def _submit(self, fn, *args) -> Future:
        job = self._pool.submit(fn, *args)
        self._pending.append(job)
        return job

    def __call__(self, event: str, result: CaseResult, name: str | None = None) -> None:
        for out in self.outputs:
            if event == "prediction":
                out.prediction(result, self.folder, self._submit)
            elif event == "method":
                out.method(result, result.methods[name], self.folder, self._submit)

    def finish(self, result: CaseResult) -> dict:
        """Every remaining output of the case; returns its summary (with the timings)."""
        try:
            for out in self.outputs:
                t = time.perf_counter()
                out.case(result, self.folder)
                if out.timing:
                    result.timings[f"{out.timing}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for job in self._pending:
                job.result()
            result.timings["finish_writes_s"] = time.perf_counter() - t
        finally:
            self._pool.shutdown(wait=True)
        for out in self.outputs:
            out.close(result, self.folder)
        return {**result.summary, "timings": {k: round(v, 4) for k, v in result.timings.items()}}

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
