"""Pictures: the overview (the scan, then each method, on three orthogonal slices) and the layer sweep.

Drawn with Pillow straight from numpy arrays: an overview of a BraTS case costs a few tens of
milliseconds, where matplotlib took ~0.3 s (plus 0.4 s to import) -- on a single case that was
half of all the I/O time around the explanation. Each slice is shown at its physical aspect (the
voxel spacing is honoured, so anisotropic scans are not squashed) and the same way up whatever
order the file stores its voxels in (`orientation.view_slice`, from the affine), with the
anatomical direction written at each panel's edges (R/L, A/P, S/I) and the convention said under
the picture: neurological (the patient's right on the right) by default, radiological on request.
Maps are shown only inside the brain (where the scan is nonzero: a skull-stripped scan's air is
exactly 0) and only above FLOOR, in a perceptually uniform colour map by default (`colours`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from . import colours
from .orientation import VIEW_WORLD_AXIS, view_axis, view_pixel_mm, view_slice

ORIENTATIONS = ("axial", "coronal", "sagittal")
PANEL = 300  # every slice is fitted into a PANEL x PANEL box
GAP = 6
PAD = 12
ALPHA = 0.6  # opacity of the attribution overlay
FLOOR = 0.05  # overlay only where the display map exceeds this (else the scan shows through)
COLOURBAR_LABEL = "attribution (0..1 of its 99th percentile)"
PNG_COMPRESSION = 1  # zlib's fastest level: ~60% of level 6's time, for files ~12% larger
TRUE_OUTLINE = (255, 255, 255)  # the true tumour (the case's _seg)
PREDICTED_OUTLINE = (0, 230, 255)  # the predicted tumour (a segmenter's labels): cyan, not in the default map
CONVENTIONS = ("neurological", "radiological")
#: the anatomical direction at each edge of a view's picture: (top, bottom, left, right), neurological
EDGE_LETTERS = {"axial": ("A", "P", "L", "R"), "coronal": ("S", "I", "L", "R"), "sagittal": ("S", "I", "P", "A")}
_CONVENTION_TEXT = {"neurological": "neurological convention: the patient's right (R) on the picture's right",
                    "radiological": "radiological convention: the patient's right (R) on the picture's left"}


def warm_up() -> None:
    """Import Pillow and load the fonts ahead of time (the pipeline does it in the background)."""
    for size in (12, 13, 14, 16):
        _font(size)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> RGB in 0..255 (float32), binned into 256 colours like matplotlib's 'jet'."""
    return colours.apply(values, "jet")


def edge_letters(view: str, convention: str = "neurological") -> tuple[str, str, str, str]:
    """(top, bottom, left, right) anatomical letters of a `view` picture (`orientation.view_slice`
    puts every scan the same way up, so they follow from the view and the convention)."""
    top, bottom, left, right = EDGE_LETTERS[view]
    if convention == "radiological" and view != "sagittal":
        left, right = right, left
    return top, bottom, left, right


def _shown(plane: np.ndarray, view: str, convention: str) -> np.ndarray:
    """A `view_slice` picture as the convention shows it (radiological: mirrored left-right)."""
    return plane[:, ::-1] if convention == "radiological" and view != "sagittal" else plane


def _mm(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size in mm per axis (a missing or zero entry taken as 1 mm)."""
    sx, sy, sz = (float(s) if s and s > 0 else 1.0 for s in spacing[:3])
    return sx, sy, sz


def _fitted_size(shape: tuple[int, int], pixel: tuple[float, float], scale: float) -> tuple[int, int]:
    """Display size (width, height) of a slice at `scale` display pixels per mm."""
    rows, cols = shape
    return max(1, round(cols * pixel[0] * scale)), max(1, round(rows * pixel[1] * scale))


def _scale(shape: Sequence[int], spacing: Sequence[float], box: int) -> float:
    """Display pixels per mm that fit the volume's longest side into `box`: one scale for every
    view, so a structure has the same size in the axial, coronal and sagittal panels."""
    return box / max(n * s for n, s in zip(shape[:3], _mm(spacing), strict=True))


def grey_window(values: np.ndarray) -> tuple[float, float]:
    """Grey window of a scan (the figures' and the report's): the 1st..99th percentile (nearest
    rank, by a partial sort) of the nonzero (brain) values."""
    values = np.asarray(values)
    vals = values[values != 0]
    vals = vals if vals.size else values.ravel()
    if not vals.size:
        return 0.0, 1.0
    ranks = [int(round(q * (vals.size - 1))) for q in (0.01, 0.99)]
    lo, hi = (float(v) for v in np.partition(vals, ranks)[ranks])
    return lo, hi if hi > lo else lo + 1


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (in the mask, with a 4-neighbour outside it)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inner


def _blend(grey: np.ndarray, overlay: np.ndarray | None, outlines=(), colormap: str = colours.DEFAULT,
           inside: np.ndarray | None = None) -> np.ndarray:
    """One panel as uint8 RGB: the grey scan (0..1), the colour-mapped map laid over it at ALPHA
    where it exceeds FLOOR (and lies `inside`, the brain), and each (mask, colour) outline."""
    rgb = np.repeat((grey * 255).astype(np.float32)[..., None], 3, axis=-1)
    if overlay is not None:
        shown = overlay > FLOOR
        if inside is not None:
            shown &= inside
        rgb[shown] = (1 - ALPHA) * rgb[shown] + ALPHA * colours.apply(overlay[shown], colormap)
    for mask, colour in outlines:
        rgb[mask_edges(mask)] = colour
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)  # Pillow's bundled scalable font
    except (TypeError, OSError, ImportError):  # an old Pillow or one without FreeType
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _put_text(canvas, xy: tuple[int, int], text: str, font, anchor: str = "ma", vertical: bool = False) -> None:
    """Black text at xy (Pillow anchor: 'ma' = middle/ascender); `vertical` reads bottom to top,
    centred on xy."""
    from PIL import Image, ImageDraw

    if not vertical:
        ImageDraw.Draw(canvas).text(xy, text, fill=(0, 0, 0), font=font, anchor=anchor)
        return
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    canvas.paste((0, 0, 0), (xy[0] - mask.width // 2, xy[1] - mask.height // 2), mask)


def _panel_image(rgb: np.ndarray, size: tuple[int, int]):
    """The panel at its display size; nearest-neighbour, so voxels stay crisp squares (and the PNG
    compresses 3x better than with interpolated pixels)."""
    from PIL import Image

    image = Image.fromarray(rgb, "RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.NEAREST)


def _colourbar(canvas, x: int, y: int, height: int, font, label_font, colormap: str,
               label: str = COLOURBAR_LABEL) -> None:
    """A vertical colour bar (1 at the top) with ticks at 0, .25, .5, .75, 1 and its label."""
    from PIL import Image, ImageDraw

    width = 16
    ramp = np.linspace(1, 0, height, dtype=np.float32)
    bar = np.repeat(colours.apply(ramp, colormap)[:, None, :], width, axis=1)
    canvas.paste(Image.fromarray((bar + 0.5).astype(np.uint8), "RGB"), (x, y))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x - 1, y - 1, x + width, y + height), outline=(0, 0, 0))
    label_x = x + width + 4
    widest = 0
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        ty = y + round((1 - value) * (height - 1))
        draw.line((x + width, ty, x + width + 3, ty), fill=(0, 0, 0))
        text = f"{value:g}"
        draw.text((label_x + 2, ty), text, fill=(0, 0, 0), font=font, anchor="lm")
        widest = max(widest, _text_size(font, text)[0])
    label = label if _text_size(label_font, label)[0] <= height else "attribution (0..1)"
    _put_text(canvas, (label_x + widest + 16, y + height // 2), label, label_font, vertical=True)


def _letters(canvas, box: tuple[int, int, int, int], letters: tuple[str, str, str, str], font) -> None:
    """The anatomical letters at the middle of each edge of a panel (white on a dark stroke, so
    they read over any scan)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    top, bottom, left, right = letters
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    for text, xy, anchor in ((top, (cx, y0 + 2), "mt"), (bottom, (cx, y1 - 2), "mb"),
                             (left, (x0 + 3, cy), "lm"), (right, (x1 - 3, cy), "rm")):
        draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def slice_caption(view: str, center: Sequence[float], shape: Sequence[int], affine=None) -> str:
    """'axial: slice 78 of 155, z = +12.0 mm': where a view's slice lies, as a voxel index (1-based,
    along the voxel axis it cuts) and as the world coordinate of its plane."""
    axis = view_axis(view, affine)
    index = int(round(center[axis]))
    world = VIEW_WORLD_AXIS[view]
    ijk = np.array([float(c) for c in center[:3]] + [1.0])
    ijk[axis] = index
    mm = (np.asarray(affine, np.float64)[:3] @ ijk)[world] if affine is not None else float(index)
    return f"{view}: slice {index + 1} of {shape[axis]}, {'xyz'[world]} = {mm:+.1f} mm"


def _legend(canvas, x: int, y: int, items, font) -> None:
    """A row of (colour swatch, text) items; a None colour is text alone."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    for colour, text in items:
        if colour is not None:
            draw.rectangle((x, y + 3, x + 22, y + 11), fill=(90, 90, 90))
            draw.line((x + 1, y + 7, x + 21, y + 7), fill=colour, width=3)
            x += 28
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
        x += _text_size(font, text)[0] + 24


def overview(path, background, maps: dict, center, title: str = "", contour=None,
             spacing: Sequence[float] = (1.0, 1.0, 1.0), views: Sequence[str] = ORIENTATIONS, affine=None, *,
             predicted=None, notes: dict | None = None, colormap: str = colours.DEFAULT,
             convention: str = "neurological") -> None:
    """Columns: the scan alone, then one per map; rows: axial, coronal, sagittal slices through
    `center` (voxel index) (`views`: which of them, e.g. only the slice a 2D model explained),
    each row captioned with its slice index and world coordinate.

    background: [X, Y, Z] (a modality); maps: {name: [X, Y, Z] display map in 0..1} (arrays or
    anything sliceable like one), or {name: (map, scan)} to lay a column over its own scan (a map
    per modality); contour: the true tumour, outlined in white; predicted: the predicted tumour,
    outlined in magenta; notes: {name: a short second header line} (the method's settings);
    title: one or more lines (prediction, score); spacing: the voxel size in mm; affine: the
    image's, to show it the right way up (None: RAS voxel order). Written atomically as PNG.
    """
    from PIL import Image

    from .writer import atomic_path

    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: choose from {', '.join(CONVENTIONS)}")
    notes = notes or {}
    # only the shown slices are touched (a full-volume pass costs more than the drawing)
    columns = [("scan", None, background)] + [(name, *(m if isinstance(m, tuple) else (m, background)))
                                               for name, m in maps.items()]
    brains, greys = {}, {}
    for _, _, scan in columns:
        if id(scan) in greys:
            continue
        planes = {o: _shown(view_slice(scan, o, center, affine), o, convention).astype(np.float32) for o in views}
        lo, hi = grey_window(np.concatenate([b.ravel() for b in planes.values()]))
        brains[id(scan)] = {o: b != 0 for o, b in planes.items()}  # the brain: overlays stop at its edge
        greys[id(scan)] = {o: np.clip((b - lo) / (hi - lo), 0, 1) for o, b in planes.items()}
    masks = [(m, colour) for m, colour in ((predicted, PREDICTED_OUTLINE), (contour, TRUE_OUTLINE)) if m is not None]
    outlines = {o: [(_shown(view_slice(m, o, center, affine), o, convention), c) for m, c in masks] for o in views}
    scale = _scale(np.shape(background), spacing, PANEL)
    first = greys[id(background)]
    sizes = {o: _fitted_size(first[o].shape, view_pixel_mm(o, spacing, affine), scale) for o in views}

    big, font, small = _font(16), _font(14), _font(12)
    line_h = _text_size(font, "Ag")[1] + 6
    lines = [t for t in title.split("\n") if t] if title else []
    title_h = sum(_text_size(big if k == 0 else font, "Ag")[1] + 6 for k in range(len(lines))) + (PAD if lines else 0)
    head_h = line_h + (_text_size(small, "Ag")[1] + 6 if any(notes.get(n) for n, _, _ in columns) else 0)
    caption_h = _text_size(small, "Ag")[1] + 6
    row_h = caption_h + PANEL
    left, top = PAD, PAD + title_h + head_h
    grid_w = len(columns) * PANEL + (len(columns) - 1) * GAP
    grid_h = len(views) * row_h + (len(views) - 1) * GAP
    bar_x = left + grid_w + 14
    right = bar_x + 16 + 4 + _text_size(small, "0.75")[0] + 16 + line_h + PAD if maps else left + grid_w + PAD
    legend = [(TRUE_OUTLINE, "true tumour") if contour is not None else None,
              (PREDICTED_OUTLINE, "predicted tumour") if predicted is not None else None,
              (None, _CONVENTION_TEXT[convention])]
    legend = [item for item in legend if item is not None]
    widths = [_text_size(big if k == 0 else font, t)[0] + 2 * PAD for k, t in enumerate(lines)]
    legend_w = sum(_text_size(small, t)[0] + 24 + (28 if c else 0) for c, t in legend) + 2 * PAD
    canvas = Image.new("RGB", (max([right, legend_w, *widths]), top + grid_h + PAD + line_h + PAD), (255, 255, 255))

    y = PAD
    for k, text in enumerate(lines):
        f = big if k == 0 else font
        _put_text(canvas, (PAD, y), text, f, anchor="la")
        y += _text_size(f, "Ag")[1] + 6
    for c, (name, _, _) in enumerate(columns):
        cx = left + c * (PANEL + GAP) + PANEL // 2
        _put_text(canvas, (cx, PAD + title_h), name, font)
        if notes.get(name):
            _put_text(canvas, (cx, PAD + title_h + line_h), notes[name], small)
    for r, orient in enumerate(views):
        y0 = top + r * (row_h + GAP)
        _put_text(canvas, (left, y0), slice_caption(orient, center, np.shape(background), affine), small, anchor="la")
        for c, (_, volume, scan) in enumerate(columns):
            overlay = None if volume is None else _shown(view_slice(volume, orient, center, affine), orient, convention)
            rgb = _blend(greys[id(scan)][orient], overlay, outlines[orient], colormap, brains[id(scan)][orient])
            panel = _panel_image(rgb, sizes[orient])
            x0, py = left + c * (PANEL + GAP), y0 + caption_h
            px, py = x0 + (PANEL - panel.width) // 2, py + (PANEL - panel.height) // 2
            canvas.paste(panel, (px, py))
            _letters(canvas, (px, py, px + panel.width, py + panel.height), edge_letters(orient, convention), small)
    if maps:
        bar_h = min(grid_h, 360) - 20
        _colourbar(canvas, bar_x, top + (grid_h - bar_h) // 2, bar_h, small, small, colormap)
    _legend(canvas, PAD, top + grid_h + PAD, legend, small)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)


def layer_grid(path, background, maps: list, names: list[str], center, orientation: str = "axial",
               spacing: Sequence[float] = (1.0, 1.0, 1.0), affine=None, *, title: str = "",
               scales: Sequence[float] | None = None, colormap: str = colours.DEFAULT,
               convention: str = "neurological") -> None:
    """One panel per layer (the paper's Fig. 5): the same slice, each layer's Grad-CAM over the
    scan, each with its own colour bar (the maps are normalised per layer; `scales`: the raw value
    that 1 stands for) and a red "all zero" mark on a layer whose map is zero everywhere (a layer
    that shows nothing on this slice is not one that is zero)."""
    from PIL import Image, ImageDraw

    from .writer import atomic_path

    box = 240
    n = len(maps)
    cols = max(1, min(5, n))
    rows = max(1, -(-n // cols))
    plane = _shown(view_slice(background, orientation, center, affine), orientation, convention).astype(np.float32)
    inside = plane != 0
    lo, hi = grey_window(plane)
    grey = np.clip((plane - lo) / (hi - lo), 0, 1)
    pixel = view_pixel_mm(orientation, spacing, affine)
    size = _fitted_size(grey.shape, pixel, box / max(grey.shape[1] * pixel[0], grey.shape[0] * pixel[1]))
    big, font, small = _font(16), _font(13), _font(12)
    head_h = _text_size(font, "Ag")[1] + 6
    bar_h = 8 + 4 + _text_size(small, "Ag")[1] + 4
    cell_w, cell_h = box + GAP, head_h + box + bar_h + GAP
    caption = slice_caption(orientation, center, np.shape(background), affine)
    lines = [t for t in (title, caption) if t]
    title_h = len(lines) * (_text_size(big, "Ag")[1] + 6) + 4
    legend_h = _text_size(small, "Ag")[1] + 6
    width = max(2 * PAD + cols * cell_w - GAP, _text_size(small, _CONVENTION_TEXT[convention])[0] + 2 * PAD,
                *[_text_size(big, t)[0] + 2 * PAD for t in lines])
    canvas = Image.new("RGB", (width, 2 * PAD + title_h + rows * cell_h - GAP + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(lines):
        _put_text(canvas, (PAD, PAD + k * (_text_size(big, "Ag")[1] + 6)), text, big if k == 0 else font, anchor="la")
    ramp = np.repeat(colours.apply(np.linspace(0, 1, box, dtype=np.float32), colormap)[None], 8, axis=0)
    for k in range(n):
        x0, y0 = PAD + (k % cols) * cell_w, PAD + title_h + (k // cols) * cell_h
        _put_text(canvas, (x0 + box // 2, y0), f"{k + 1}. {names[k][-30:]}", font)
        layer = np.asarray(view_slice(maps[k], orientation, center, affine))
        zero = not np.any(np.asarray(maps[k]))
        panel = _panel_image(_blend(grey, _shown(layer, orientation, convention), (), colormap, inside), size)
        px, py = x0 + (box - panel.width) // 2, y0 + head_h + (box - panel.height) // 2
        canvas.paste(panel, (px, py))
        _letters(canvas, (px, py, px + panel.width, py + panel.height), edge_letters(orientation, convention), small)
        by = y0 + head_h + box + 4
        canvas.paste(Image.fromarray((ramp + 0.5).astype(np.uint8), "RGB"), (x0, by))
        draw.rectangle((x0 - 1, by - 1, x0 + box, by + 8), outline=(0, 0, 0))
        top = f"1 = {scales[k]:.3g}" if scales is not None else "1"
        draw.text((x0, by + 10), "0", fill=(0, 0, 0), font=small)
        draw.text((x0 + box, by + 10), top, fill=(0, 0, 0), font=small, anchor="ra")
        if zero:
            draw.rectangle((px, py, px + panel.width - 1, py + panel.height - 1), outline=(220, 0, 0), width=3)
            draw.text((px + panel.width // 2, py + panel.height // 2), "all zero", fill=(255, 60, 60), font=big,
                      anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    _put_text(canvas, (PAD, canvas.height - PAD - legend_h + 4), _CONVENTION_TEXT[convention], small, anchor="la")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)


def thumbnail(path, background, overlay, center, spacing: Sequence[float] = (1.0, 1.0, 1.0), affine=None,
              contour=None, box: int = 128, colormap: str = colours.DEFAULT) -> None:
    """A small axial picture of a case (a cohort index's row): `overlay` over the scan through
    `center`, the true tumour outlined; neurological convention, like the overview."""
    from .writer import atomic_path

    plane = view_slice(background, "axial", center, affine).astype(np.float32)
    lo, hi = grey_window(plane)
    grey = np.clip((plane - lo) / (hi - lo), 0, 1)
    layer = None if overlay is None else view_slice(overlay, "axial", center, affine)
    outlines = [] if contour is None else [(view_slice(contour, "axial", center, affine), TRUE_OUTLINE)]
    pixel = view_pixel_mm("axial", spacing, affine)
    size = _fitted_size(grey.shape, pixel, box / max(grey.shape[1] * pixel[0], grey.shape[0] * pixel[1]))
    image = _panel_image(_blend(grey, layer, outlines, colormap, plane != 0), size)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)
