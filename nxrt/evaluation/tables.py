"""A cohort's metrics as tables and a figure: OUT/metrics.csv (one row per case and method, one
column per metric and tumour feature), metrics.md (mean +- sd per method) and metrics.png (bars per
metric, the mean deletion / insertion curves and the MPRT curves per method). Built from the
summary.json of every case of the cohort that has one (cases kept by --resume included)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

#: tumour-estimate fields that become columns
FEATURES = ("volume_ml", "volume_error_ml", "centroid_error_mm", "dice")
CURVES = {"deletion_curve": "deletion (score / unperturbed)", "insertion_curve": "insertion (score / unperturbed)",
          "mprt_curve": "MPRT: Spearman, output layer back"}


def cohort_rows(out: Path, cases) -> list[dict]:
    rows = []
    for name in cases:
        path = Path(out) / name / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        for method, entry in summary.get("methods", {}).items():
            if "metrics" not in entry:
                continue
            row = {"case": name, "method": method}
            row.update({k: v for k, v in entry["metrics"].items() if not isinstance(v, list)})
            row.update({f"tumour_{k}": (entry.get("tumour_estimate") or {}).get(k) for k in FEATURES})
            row["_curves"] = {k: v for k, v in entry["metrics"].items() if isinstance(v, list)}
            rows.append(row)
    return rows


def _columns(rows) -> list[str]:
    cols = ["case", "method"]
    for r in rows:
        cols += [k for k in r if k not in cols and not k.startswith("_")]
    return cols


def mean_sd(mean: float, sd: float, n: int, plus_minus: str = "±") -> str:
    """One cell of the summary by method: 'n/a' without values, else 'mean ± sd (n=N)'."""
    return "n/a" if n == 0 else f"{mean:.3g} {plus_minus} {sd:.2g} (n={n})"


def summary_by_method(rows) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{method: {column: (mean, sd, n)}} over the cases (NaN / missing values left out)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for col in _columns(rows)[2:]:
        for method in dict.fromkeys(r["method"] for r in rows):
            vals = np.array([r[col] for r in rows if r["method"] == method and isinstance(r.get(col), int | float)
                             and np.isfinite(r[col])], np.float64)
            out.setdefault(method, {})[col] = (float(vals.mean()) if vals.size else float("nan"),
                                               float(vals.std(ddof=1)) if vals.size > 1 else 0.0, int(vals.size))
    return out


def write_cohort_metrics(out: Path, cases) -> list[Path]:
    """Write OUT/metrics.csv, metrics.md and metrics.png (atomically); [] when no case has metrics."""
    from ..imaging.charts import chart_grid
    from ..imaging.writer import atomic_path

    rows = cohort_rows(out, cases)
    if not rows:
        return []
    out = Path(out)
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    table = summary_by_method(rows)
    methods = list(table)
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for col in cols[2:]:
        cells = [mean_sd(*table[m][col]) for m in methods]
        lines.append(f"| {col} | " + " | ".join(cells) + " |")
    paths = [out / "metrics.csv", out / "metrics.md", out / "metrics.png"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(f"Metrics of {len({r['case'] for r in rows})} case(s), mean ± sd per method\n\n"
                       + "\n".join(lines) + "\n")
    panels = [{"title": col, "kind": "bars", "values": {m: table[m][col][0] for m in methods},
               "errors": {m: table[m][col][1] for m in methods}} for col in cols[2:]
              if any(table[m][col][2] for m in methods)]
    for key, title in CURVES.items():
        curves = {}
        for m in methods:
            found = [r["_curves"][key] for r in rows if r["method"] == m and key in r["_curves"]]
            same = [c for c in found if len(c) == len(found[0])] if found else []
            if same:
                curves[m] = np.nanmean(np.array([[np.nan if v is None else v for v in c] for c in same]), axis=0)
        if curves:
            panels.append({"title": title, "kind": "lines", "curves": curves,
                           "xlabel": "fraction perturbed" if "mprt" not in key else "layers randomised"})
    chart_grid(paths[2], panels, methods)
    return paths
