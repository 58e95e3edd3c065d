"""What one explained case found, as the few lines a person reads first (`nxrt explain` on one
case, `nxrt demo`): the prediction, the score that was explained, each method's time and how much
of its map lies in the tumour, and the figure to look at. Plain data in (summary.json's dict),
lines out.
"""

from __future__ import annotations

from pathlib import Path


def prediction_line(summary: dict) -> str:
    """'prediction: HGG (scores LGG -9.06, HGG 1.87)' or, for a segmenter, the predicted tumour
    voxels per label (named from the card when it names them)."""
    pred = summary.get("prediction") or {}
    scores = summary.get("scores") or []
    if "label" in pred:  # a classifier
        names = _label_names(summary, len(scores))
        listed = ", ".join(f"{n} {s:.3g}" for n, s in zip(names, scores, strict=True))
        return f"prediction: {pred['label']} (scores {listed})"
    names = pred.get("label_names") or []
    if "voxels_per_channel" in pred:  # independent (sigmoid / logit) channels
        counts = pred["voxels_per_channel"]
        return "prediction: voxels above threshold per channel: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    counts = {int(k): v for k, v in (pred.get("voxels_per_label") or {}).items() if int(k) != 0}
    if not counts:
        return "prediction: no tumour voxels (every voxel predicted as background)"
    named = [f"{_value_name(k, names, pred.get('label_values'))} {v}" for k, v in counts.items()]
    return f"prediction: tumour voxels per label: {', '.join(named)} ({sum(counts.values())} in all)"


def explained_score(summary: dict) -> float | None:
    """The explained target's score (summed over a multi-label target), when the summary has it."""
    first = next(iter((summary.get("methods") or {}).values()), None)
    scores = summary.get("scores") or []
    if first is None or not first.get("target"):
        return None
    target = [int(t) for t in first["target"]]
    return sum(scores[t] for t in target) if all(0 <= t < len(scores) for t in target) else None


def explained_line(summary: dict) -> str | None:
    """What was explained: the target (by name when the card names it) and its score."""
    first = next(iter((summary.get("methods") or {}).values()), None)
    if first is None or not first.get("target"):
        return None
    target = [int(t) for t in first["target"]]
    names = first.get("target_labels") or [str(t) for t in target]
    value = explained_score(summary)
    if value is None:
        return f"explained: {' + '.join(names)}"
    what = "score" if summary.get("task") == "classification" else "score (mean over the volume)"
    return f"explained: {' + '.join(names)}, {what} {value:.4g}"


def settings_line(params: dict) -> str:
    """A method's settings as one line ('steps 32, rule gausslegendre'): the plain values only."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()
                     if v is not None and not isinstance(v, (dict, list)))


def method_lines(summary: dict, width: int = 22) -> list[str]:
    lines = []
    for method, m in (summary.get("methods") or {}).items():
        line = f"  {method:<{width}s} {m.get('seconds', 0.0):6.1f} s"
        inside = [(m.get("share_in_true_tumour"), "the true tumour"),
                  (m.get("share_in_predicted_tumour"), "the predicted tumour")]
        said = [f"{share:5.1%} in {where}" for share, where in inside if share is not None]
        if said:
            line += "   " + said[0].replace(" in ", " of the map in ", 1) + "".join(f", {s}" for s in said[1:])
        lines.append(line)
    return lines


def case_lines(summary: dict) -> list[str]:
    """Prediction, explained score, one line per method."""
    explained = explained_line(summary)
    return [prediction_line(summary), *([explained] if explained else []), *method_lines(summary)]


def look_first(folder: Path) -> str | None:
    """Where to look first: the case's overview figure, when it was written."""
    figure = Path(folder) / "overview.png"
    return f"look first at {figure}" if figure.exists() else None


def _label_names(summary: dict, n: int) -> list[str]:
    first = next(iter((summary.get("methods") or {}).values()), {})
    names = (summary.get("prediction") or {}).get("label_names") or []
    if len(names) == n:
        return list(names)
    if first.get("target_labels") and len(first.get("target_labels")) == n:
        return list(first["target_labels"])
    return [str(k) for k in range(n)]


def _value_name(value: int, names: list[str], values: list[int] | None) -> str:
    """A label value's name: the card's labels name output channels; the label values a
    segmenter writes (BraTS: 0, 1, 2, 4) map to channels in order."""
    if values and value in values and names and len(names) == len(values):
        return f"{names[values.index(value)]} ({value})"
    if names and 0 <= value < len(names) and not values:
        return f"{names[value]} ({value})"
    return str(value)
