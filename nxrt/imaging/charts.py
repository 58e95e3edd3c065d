"""Small charts with Pillow (matplotlib is no runtime dependency): a grid of panels, each bars with
error whiskers (one per group) or lines (one per group), with a title and a value axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .figures import PNG_COMPRESSION, _font, _text_size

W, H, PAD = 300, 210, 10
#: one colour per group (Okabe-Ito: told apart with colour-vision deficiencies)
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
           (240, 228, 66), (0, 0, 0)]


def _axis(draw, box, lo: float, hi: float, font) -> tuple[float, float]:
    """Draw a value axis with lo / hi labels in `box` (x0, y0, x1, y1); returns (lo, hi) used."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    x0, y0, x1, y1 = box
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(120, 120, 120))
    for value, y in ((hi, y0), (lo, y1)):
        text = f"{value:.3g}"
        tw, th = _text_size(font, text)
        draw.text((x0 - tw - 4, y - th // 2), text, fill=(60, 60, 60), font=font)
    if lo < 0 < hi:
        y = y1 - (0 - lo) / (hi - lo) * (y1 - y0)
        draw.line([(x0, y), (x1, y)], fill=(200, 200, 200))
    return lo, hi


def chart_grid(path, panels: Sequence[dict], groups: Sequence[str], columns: int = 4) -> None:
    """Write a PNG of `panels`, each {"title", "kind": "bars" | "lines", "values": {group: mean} and
    "errors": {group: sd} for bars, or "curves": {group: [y...]} and optional "x": [...] for lines}.
    A legend of the groups' colours is drawn on top. Written atomically."""
    from PIL import Image, ImageDraw

    from .writer import atomic_path

    font, small = _font(13), _font(11)
    colour = {g: PALETTE[k % len(PALETTE)] for k, g in enumerate(groups)}
    legend_h = 24
    rows = max(1, -(-len(panels) // columns))
    canvas = Image.new("RGB", (columns * W + PAD, legend_h + rows * H + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    x = PAD
    for g in groups:
        draw.rectangle([x, 7, x + 12, 19], fill=colour[g])
        draw.text((x + 16, 6), g, fill=(0, 0, 0), font=font)
        x += 16 + _text_size(font, g)[0] + 18
    for k, panel in enumerate(panels):
        ox, oy = PAD + (k % columns) * W, legend_h + (k // columns) * H
        draw.text((ox + 40, oy + 4), panel["title"], fill=(0, 0, 0), font=font)
        box = (ox + 48, oy + 26, ox + W - 14, oy + H - 22)
        if panel["kind"] == "bars":
            vals = {g: v for g, v in panel["values"].items() if v is not None and np.isfinite(v)}
            errs = {g: (panel.get("errors", {}).get(g) or 0.0) for g in vals}
            if not vals:
                continue
            lo = min(0.0, *(vals[g] - errs[g] for g in vals))
            hi = max(0.0, *(vals[g] + errs[g] for g in vals))
            lo, hi = _axis(draw, box, lo, hi, small)
            span = (box[2] - box[0]) / max(1, len(groups))

            def y_of(v, lo=lo, hi=hi, box=box):
                return box[3] - (v - lo) / (hi - lo) * (box[3] - box[1])

            for j, g in enumerate(groups):
                if g not in vals:
                    continue
                bx = box[0] + j * span + span * 0.15
                draw.rectangle([bx, min(y_of(vals[g]), y_of(0)), bx + span * 0.7, max(y_of(vals[g]), y_of(0))],
                               fill=colour[g])
                if errs[g]:
                    cx = bx + span * 0.35
                    draw.line([(cx, y_of(vals[g] - errs[g])), (cx, y_of(vals[g] + errs[g]))], fill=(0, 0, 0))
        else:
            curves = {g: np.asarray([np.nan if v is None else v for v in c], np.float64)
                      for g, c in panel["curves"].items() if len(c)}
            finite = np.concatenate([c[np.isfinite(c)] for c in curves.values()]) if curves else np.array([])
            if not finite.size:
                continue
            lo, hi = _axis(draw, box, float(finite.min()), float(finite.max()), small)
            for g, c in curves.items():
                xs = np.asarray(panel.get("x") or np.linspace(0, 1, c.size), np.float64)
                xs = (xs - xs.min()) / (xs.max() - xs.min() or 1.0)
                pts = [(box[0] + xv * (box[2] - box[0]), box[3] - (yv - lo) / (hi - lo) * (box[3] - box[1]))
                       for xv, yv in zip(xs, c, strict=False) if np.isfinite(yv)]
                if len(pts) > 1:
                    draw.line(pts, fill=colour.get(g, (0, 0, 0)), width=2)
            if panel.get("xlabel"):
                draw.text((box[0], box[3] + 4), panel["xlabel"], fill=(90, 90, 90), font=small)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)
