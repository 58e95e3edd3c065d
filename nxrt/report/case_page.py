"""`report.html`: one case as a page that opens from the file system with no network: the scan with
each method's map in three linked views (axial, coronal, sagittal), slice sliders, opacity, method
and modality switches, the true and predicted tumour outlines, the prediction, the methods'
settings, times, tumour shares and metrics, and the provenance.

The page is one file: the project's own script and style (nxrt/report/static) inlined, and the
volumes packed by `volumes` into a JSON block. Plain data in (arrays, the summary dict), one file out.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from .. import findings
from ..imaging import colours
from ..imaging.orientation import view_axis
from . import volumes

#: the page shows a map where it exceeds this (as the figures: `figures.FLOOR`)
FLOOR = 0.05
#: the summary entries of a method shown in its row, in this order (label, key, format)
METHOD_FIELDS = (("seconds", "seconds", "{:.2f}"), ("share in true tumour", "share_in_true_tumour", "{:.1%}"),
                 ("share in predicted tumour", "share_in_predicted_tumour", "{:.1%}"))


def static(name: str) -> str:
    return resources.files("nxrt.report").joinpath("static", name).read_text(encoding="utf-8")


def page_data(summary: dict, scans: dict, maps: dict, affine, spacing, truth=None, predicted=None) -> dict:
    """The JSON the page's script reads: scans {channel: [X, Y, Z]}, maps {method: display map in
    0..1}, truth / predicted: masks (file voxel order, all on the case's grid). The volumes are
    packed on a few threads at once (numpy and zlib release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    first = next(iter(scans.values()))
    brain = np.zeros(np.shape(first), bool)
    for scan in scans.values():
        brain |= np.asarray(scan) != 0
    f = volumes.frame(brain, affine, spacing)

    def outline_bits() -> str:
        bits = np.zeros(f.shape, np.uint8)
        if truth is not None:
            bits |= f.take(truth).astype(bool).astype(np.uint8)
        if predicted is not None:
            bits |= f.take(predicted).astype(bool).astype(np.uint8) << 1
        return volumes.packed(bits, delta=False)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        scan_jobs = {name: pool.submit(lambda v: volumes.packed(volumes.grey_bytes(f.take(v), volumes.SCAN_LEVELS)),
                                       scan) for name, scan in scans.items()}
        map_jobs = {name: pool.submit(lambda v: volumes.packed(volumes.unit_bytes(f.take(v), FLOOR)), m)
                    for name, m in maps.items()}
        outline = pool.submit(outline_bits)
        packed_scans = {name: job.result() for name, job in scan_jobs.items()}
        packed_maps = {name: job.result() for name, job in map_jobs.items()}
    file_axes = {v: view_axis(v, affine) for v in ("axial", "coronal", "sagittal")}
    start = None
    if summary.get("slice"):  # a 2D model's case: open on the slice it explained
        axis, index = int(summary["slice"]["voxel_axis"]), int(summary["slice"]["index"])
        w = f.order.index(axis)
        shown = (np.shape(first)[axis] - 1 - index if f.flip[w] else index) - f.start[w]
        start = {"axis": w, "index": int(np.clip(shown, 0, f.shape[w] - 1))}
    return {
        "case": summary.get("case", ""),
        "shape": list(f.shape), "spacing": [round(s, 5) for s in f.spacing],
        "affine": np.round(f.affine, 6).tolist(), "toFile": f.to_file.tolist(),
        "fileShape": [int(n) for n in np.shape(first)[:3]], "fileAxis": file_axes,
        "scans": packed_scans, "scanLevels": volumes.SCAN_LEVELS, "maps": packed_maps,
        "outline": outline.result(), "hasTruth": truth is not None, "hasPredicted": predicted is not None,
        "lut": colours.lut(colours.DEFAULT).round().astype(int).ravel().tolist(),
        "floor": FLOOR, "start": start,
    }


def _cell(value, fmt: str) -> str:
    if value is None:
        return "&ndash;"
    try:
        return html.escape(fmt.format(value))
    except (TypeError, ValueError):
        return html.escape(str(value))


def _method_table(summary: dict) -> str:
    methods = summary.get("methods") or {}
    metric_names = sorted({k for m in methods.values() for k, v in (m.get("metrics") or {}).items()
                           if isinstance(v, (int, float)) or v is None})
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _, _ in METHOD_FIELDS)
    head += "".join(f"<th>{html.escape(n)}</th>" for n in metric_names)
    rows = []
    for name, m in methods.items():
        params = findings.settings_line(m.get("params") or {})
        cells = "".join(f"<td>{_cell(m.get(key), fmt)}</td>" for _, key, fmt in METHOD_FIELDS)
        cells += "".join(f"<td>{_cell((m.get('metrics') or {}).get(n), '{:.4g}')}</td>" for n in metric_names)
        rows.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(params) or '&ndash;'}</td>{cells}</tr>")
    return (f"<table class='methods'><tr><th>method</th><th>settings</th>{head}</tr>{''.join(rows)}</table>")


def _provenance(summary: dict) -> str:
    p = summary.get("provenance") or {}
    model = p.get("model") or {}
    items = [("model", model.get("path")), ("sha256", (model.get("sha256") or "")[:16]),
             ("provider", p.get("provider")), ("command", p.get("command")),
             ("versions", ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items())),
             ("started", p.get("started_utc")), ("finished", p.get("finished_utc"))]
    return "<dl class='provenance'>" + "".join(f"<dt>{k}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items
                                               if v) + "</dl>"


def render(summary: dict, data: dict) -> str:
    """The whole page as text."""
    lines = [findings.prediction_line(summary), findings.explained_line(summary)]
    said = "".join(f"<p>{html.escape(t)}</p>" for t in lines if t)
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(summary.get('case', 'case'))} &middot; nxrt report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{static('report.css')}</style></head>
<body>
<header><h1>{html.escape(summary.get('case', ''))}</h1>{said}</header>
<section id="viewer" aria-label="viewer">
<div id="controls"></div>
<div id="views"></div>
<p id="legend"></p>
</section>
<section><h2>Methods</h2>{_method_table(summary)}</section>
<section><h2>Provenance</h2>{_provenance(summary)}</section>
<script id="nxrt-data" type="application/json">{blob}</script>
<script>{static('case.js')}</script>
</body></html>
"""


def write(path: Path, summary: dict, scans: dict, maps: dict, affine, spacing, truth=None, predicted=None) -> int:
    """Write the page atomically; returns its size in bytes."""
    from ..imaging.writer import atomic_path

    text = render(summary, page_data(summary, scans, maps, affine, spacing, truth, predicted))
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))
