"""`index.html`: a cohort as one sortable table, a row per case (status, prediction, explained
score, each method's share of its map in the true tumour and its key metrics, a thumbnail) linking
to the case's report.html, and the metric summary by method (mean +- sd). Text only: thumbnails
are the cases' own thumbnail.png files, loaded lazily, so the page stays small for 1000 cases
(about 0.4 kB per row). Opens from the file system; its sorting script is the project's own.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from .. import findings
from ..evaluation.tables import cohort_rows, mean_sd, summary_by_method
from .case_page import static

#: metrics shown per method in a row (the first of these a cohort has), besides the tumour share
KEY_METRICS = 3


def _summary(out: Path, outcome) -> dict | None:
    if outcome.summary:
        return outcome.summary
    path = out / outcome.name / "summary.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def _number(value, fmt: str) -> tuple[str, str]:
    """(shown text, sort key) of a value."""
    if isinstance(value, (int, float)) and value == value:
        return html.escape(fmt.format(value)), repr(float(value))
    return "&ndash;", ""


def _prediction(summary: dict) -> str:
    """A classifier's label, or a segmenter's tumour size in voxels (the full line is the case page's)."""
    pred = summary.get("prediction") or {}
    if "label" in pred:
        return str(pred["label"])
    counts = pred.get("voxels_per_label") or pred.get("voxels_per_channel") or {}
    tumour = sum(v for k, v in counts.items() if str(k) != "0")
    return f"{tumour} tumour voxels"


def _key_metrics(summaries: list[dict]) -> list[str]:
    names: list[str] = []
    for s in summaries:
        for m in (s.get("methods") or {}).values():
            for k, v in (m.get("metrics") or {}).items():
                if k not in names and (isinstance(v, (int, float)) or v is None):
                    names.append(k)
    return names[:KEY_METRICS]


def render(out: Path, outcomes) -> str:
    out = Path(out)
    summaries = {o.name: _summary(out, o) for o in outcomes}
    present = [s for s in summaries.values() if s]
    methods = list(dict.fromkeys(m for s in present for m in (s.get("methods") or {})))
    metrics = _key_metrics(present)
    columns = ["case", "status", "prediction", "explained score"]
    for m in methods:
        columns += [f"{m}: share in true tumour"] + [f"{m}: {k}" for k in metrics]
    head = "".join(f"<th class='sortable' data-column='{k}'>{html.escape(c)}</th>" for k, c in enumerate(columns))
    rows = []
    for o in outcomes:
        s = summaries[o.name] or {}
        link = out / o.name / "report.html"
        name = html.escape(o.name)
        where = html.escape(quote(o.name))  # (a folder name is a URL path segment here)
        case = f"<a href='{where}/report.html'>{name}</a>" if link.exists() else name
        thumb = out / o.name / "thumbnail.png"
        picture = (f"<img class='thumb' loading='lazy' alt='' src='{where}/thumbnail.png'>"
                   if thumb.exists() else "")
        status_class = " class='failed'" if not (o.status == "ok" or o.status.startswith("skipped")) else ""
        prediction = _prediction(s) if s else ""
        cells = [(f"{picture}{case}", o.name), (html.escape(o.status), o.status),
                 (html.escape(prediction), prediction), _number(findings.explained_score(s) if s else None, "{:.4g}")]
        for m in methods:
            entry = (s.get("methods") or {}).get(m) or {}
            cells.append(_number(entry.get("share_in_true_tumour"), "{:.1%}"))
            cells += [_number((entry.get("metrics") or {}).get(k), "{:.3g}") for k in metrics]
        rows.append(f"<tr{status_class}>" + "".join(f"<td data-sort='{html.escape(key)}'>{text}</td>"
                                                    for text, key in cells) + "</tr>")
    done = sum(o.status == "ok" or o.status.startswith("skipped") for o in outcomes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nxrt cohort: {len(outcomes)} cases</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{static('report.css')}</style></head>
<body>
<header><h1>Cohort: {len(outcomes)} case(s), {done} done</h1>
<p>Click a column to sort; a case's name opens its report.</p></header>
<section class="wide"><table id="cases"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>
{_metric_summary(out, [o.name for o in outcomes])}
<script>{static('cohort.js')}</script>
</body></html>
"""


def _metric_summary(out: Path, cases) -> str:
    rows = cohort_rows(out, cases)
    if not rows:
        return ""
    table = summary_by_method(rows)
    methods = list(table)
    columns = list(next(iter(table.values())))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    body = []
    for col in columns:
        cells = [mean_sd(*table[m][col], plus_minus="&plusmn;") for m in methods]
        body.append(f"<tr><th>{html.escape(col)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<section><h2>Metrics by method (mean &plusmn; sd)</h2><table id='metrics'><tr><th>metric</th>{head}</tr>"
            + "".join(body) + "</table></section>")


def write(out: Path, outcomes) -> Path:
    """Write OUT/index.html atomically; returns its path."""
    from ..imaging.writer import atomic_path

    path = Path(out) / "index.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render(out, outcomes), encoding="utf-8")
    return path
