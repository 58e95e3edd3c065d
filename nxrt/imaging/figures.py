"""Pictures: the overview (methods side by side on three orthogonal slices) and the layer sweep.

Drawn with Pillow straight from numpy arrays: an overview of a BraTS case costs a few tens of
milliseconds, where matplotlib took ~0.3 s (plus 0.4 s to import) -- on a single case that was
half of all the I/O time around the explanation. Each slice is shown at its physical aspect (the
voxel spacing is honoured, so anisotropic scans are not squashed) and the same way up whatever
order the file stores its voxels in (`orientation.view_slice`, from the affine).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .orientation import view_pixel_mm, view_slice

ORIENTATIONS = ("axial", "coronal", "sagittal")
PANEL = 256  # every slice is fitted into a PANEL x PANEL box
GAP = 6
PAD = 10
ALPHA = 0.55  # opacity of the attribution overlay
FLOOR = 0.05  # overlay only where the display map exceeds this (else the scan shows through)
COLOURBAR_LABEL = "attribution (0..1, 99th percentile)"
PNG_COMPRESSION = 1  # zlib's fastest level: ~60% of level 6's time, for files ~12% larger

# matplotlib's 'jet' colour map as its piecewise-linear (position, value) knots per channel, so
# the pictures keep the colours of the NeuroXAI paper without importing matplotlib
_JET_KNOTS = (((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
              ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
              ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)))
_LUT_SIZE = 256
_JET_LUT = np.stack([np.interp(np.linspace(0, 1, _LUT_SIZE), *zip(*knots, strict=True)) for knots in _JET_KNOTS],
                    axis=-1).astype(np.float32) * 255


def warm_up() -> None:
    """Import Pillow and load the fonts ahead of time (the pipeline does it in the background)."""
    for size in (11, 12, 14):
        _font(size)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> RGB in 0..255 (float32), binned into 256 colours like matplotlib's 'jet'."""
    index = np.clip((np.asarray(values, np.float32) * _LUT_SIZE).astype(np.intp), 0, _LUT_SIZE - 1)
    return _JET_LUT[index]


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


def _window(values: np.ndarray) -> tuple[float, float]:
    """Grey window: the 1st..99th percentile of the nonzero (brain) values."""
    vals = values[values != 0]
    vals = vals if vals.size else values.ravel()
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (in the mask, with a 4-neighbour outside it)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inner


def _blend(grey: np.ndarray, overlay: np.ndarray | None, outline: np.ndarray | None = None) -> np.ndarray:
    """One panel as uint8 RGB: the grey scan (0..1), the colour-mapped map laid over it at ALPHA
    where it exceeds FLOOR, and the outline (a mask) in white."""
    rgb = np.repeat((grey * 255).astype(np.float32)[..., None], 3, axis=-1)
    if overlay is not None:
        shown = overlay > FLOOR
        rgb[shown] = (1 - ALPHA) * rgb[shown] + ALPHA * jet(overlay[shown])
    if outline is not None:
        rgb[mask_edges(outline)] = 255
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


def _colourbar(canvas, x: int, y: int, height: int, font, label_font) -> None:
    """A vertical jet bar (1 at the top) with ticks at 0, .25, .5, .75, 1 and its label."""
    from PIL import Image, ImageDraw

    width = 16
    ramp = np.linspace(1, 0, height, dtype=np.float32)
    bar = np.repeat(jet(ramp)[:, None, :], width, axis=1)
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
    label = COLOURBAR_LABEL if _text_size(label_font, COLOURBAR_LABEL)[0] <= height else "attribution (0..1)"
    _put_text(canvas, (label_x + widest + 16, y + height // 2), label, label_font, vertical=True)


def overview(path, background, maps: dict, center, title: str = "", contour=None,
             spacing: Sequence[float] = (1.0, 1.0, 1.0), views: Sequence[str] = ORIENTATIONS, affine=None) -> None:
    """Rows: methods; columns: axial, coronal, sagittal slices through `center` (voxel index)
    (`views`: which of them, e.g. only the slice a 2D model explained).

    background: [X, Y, Z] (a modality); maps: {method: [X, Y, Z] display map in 0..1} (arrays or
    anything sliceable like one); contour: optional tumour mask outlined on every panel; spacing:
    the voxel size in mm; affine: the image's, to show it the right way up (None: RAS voxel order).
    Written atomically as PNG. Without maps, one row shows the scan alone.
    """
    from PIL import Image

    from .writer import atomic_path

    # only the three shown slices are touched (a full-volume pass costs more than the drawing)
    backgrounds = {o: view_slice(background, o, center, affine).astype(np.float32) for o in views}
    lo, hi = _window(np.concatenate([b.ravel() for b in backgrounds.values()]))
    greys = {o: np.clip((b - lo) / (hi - lo), 0, 1) for o, b in backgrounds.items()}
    outlines = {o: view_slice(contour, o, center, affine) for o in views} if contour is not None else {}
    scale = _scale(np.shape(background), spacing, PANEL)
    sizes = {o: _fitted_size(greys[o].shape, view_pixel_mm(o, spacing, affine), scale) for o in views}
    rows = list(maps.items()) or [("", None)]

    font, small = _font(14), _font(12)
    title_h = _text_size(font, "Ag")[1] + PAD if title else 0
    head_h = _text_size(font, "Ag")[1] + 6
    label_w = _text_size(font, "Ag")[1] + 6
    left, top = PAD + label_w + 4, PAD + title_h + head_h
    grid_w, grid_h = len(views) * PANEL + (len(views) - 1) * GAP, len(rows) * PANEL + (len(rows) - 1) * GAP
    bar_x = left + grid_w + 14
    right = bar_x + 16 + 4 + _text_size(small, "0.75")[0] + 16 + label_w + PAD if maps else left + grid_w + PAD
    title_w = _text_size(font, title)[0] + 2 * PAD if title else 0
    canvas = Image.new("RGB", (max(right, title_w), top + grid_h + PAD), (255, 255, 255))

    if title:  # over the panels, or over the whole picture when it is wider than they are
        _put_text(canvas, (left + grid_w // 2 if title_w <= left + grid_w else canvas.width // 2, PAD), title, font)
    for c, orient in enumerate(views):
        _put_text(canvas, (left + c * (PANEL + GAP) + PANEL // 2, PAD + title_h), orient, font)
    for r, (name, volume) in enumerate(rows):
        y0 = top + r * (PANEL + GAP)
        if name:
            _put_text(canvas, (PAD + label_w // 2, y0 + PANEL // 2), name, font, vertical=True)
        for c, orient in enumerate(views):
            overlay = None if volume is None else view_slice(volume, orient, center, affine)
            panel = _panel_image(_blend(greys[orient], overlay, outlines.get(orient)), sizes[orient])
            x0 = left + c * (PANEL + GAP)
            canvas.paste(panel, (x0 + (PANEL - panel.width) // 2, y0 + (PANEL - panel.height) // 2))
    if maps:
        bar_h = min(grid_h, 320) - 20
        _colourbar(canvas, bar_x, top + (grid_h - bar_h) // 2, bar_h, small, small)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)


def layer_grid(path, background, maps: list, names: list[str], center, orientation: str = "axial",
               spacing: Sequence[float] = (1.0, 1.0, 1.0), affine=None) -> None:
    """One panel per layer (the paper's Fig. 5): the same slice, each layer's Grad-CAM over the scan."""
    from PIL import Image

    from .writer import atomic_path

    box = 180
    n = len(maps)
    cols = max(1, min(6, n))
    rows = max(1, -(-n // cols))
    grey = view_slice(background, orientation, center, affine).astype(np.float32)
    lo, hi = _window(grey)
    grey = np.clip((grey - lo) / (hi - lo), 0, 1)
    pixel = view_pixel_mm(orientation, spacing, affine)
    size = _fitted_size(grey.shape, pixel, box / max(grey.shape[1] * pixel[0], grey.shape[0] * pixel[1]))
    font = _font(11)
    head_h = _text_size(font, "Ag")[1] + 6
    cell_w, cell_h = box + GAP, head_h + box + GAP
    canvas = Image.new("RGB", (2 * PAD + cols * cell_w - GAP, 2 * PAD + rows * cell_h - GAP), (255, 255, 255))
    for k in range(n):
        x0, y0 = PAD + (k % cols) * cell_w, PAD + (k // cols) * cell_h
        _put_text(canvas, (x0 + box // 2, y0), f"{k + 1}. {names[k][-24:]}", font)
        panel = _panel_image(_blend(grey, view_slice(maps[k], orientation, center, affine)), size)
        canvas.paste(panel, (x0 + (box - panel.width) // 2, y0 + head_h + (box - panel.height) // 2))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=PNG_COMPRESSION)
