"""The pictures, checked as pictures: colours against matplotlib's 'jet' and CIELAB lightness,
panels at the scan's physical aspect, the scan-only column, outlines where the masks' borders
are, orientation letters on the anatomy the affine names, the zero layer marked."""

import numpy as np
import pytest
from PIL import Image

from nxrt.imaging import figures


def test_jet_matches_matplotlib():
    import matplotlib

    values = np.linspace(0, 1, 2001)
    expected = matplotlib.colormaps["jet"](values)[:, :3] * 255
    np.testing.assert_allclose(figures.jet(values), expected, atol=1e-3)


def test_ember_is_perceptually_uniform_in_lightness():
    """CIELAB lightness of the default map, computed here from its sRGB values by the standard
    formulas (the inverse of what builds it): monotone, in equal steps, from dark to light."""
    rgb = figures.colours.lut("ember") / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126729, 0.7151522, 0.0721750])
    lightness = np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)
    steps = np.diff(lightness)
    assert lightness[0] < 22 and lightness[-1] > 88
    assert steps.min() > 0 and steps.std() < 0.1 * steps.mean()  # 8-bit rounding is all that is left
    assert np.ptp(rgb, axis=1).mean() > 0.3  # a colour map, not a grey ramp


def _panels(png) -> list[tuple[int, int]]:
    """(width, height) of each black panel of a picture, top to bottom then left to right."""
    from scipy import ndimage

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    labels, n = ndimage.label(rgb.max(axis=-1) < 10)
    boxes = [b for b in ndimage.find_objects(labels) if (b[0].stop - b[0].start) * (b[1].stop - b[1].start) > 2000]
    boxes.sort(key=lambda b: (b[0].start, b[1].start))
    return [(b[1].stop - b[1].start, b[0].stop - b[0].start) for b in boxes]


@pytest.mark.parametrize(("spacing", "expected"), [
    ((1.0, 1.0, 1.0), [(300, 300), (300, 150), (300, 150)]),  # 40 x 40 x 20 mm: axial, coronal, sagittal rows
    ((1.0, 1.0, 3.0), [(200, 200), (200, 300), (200, 300)]),  # 40 x 40 x 60 mm: tall coronal/sagittal
    ((2.0, 1.0, 1.0), [(300, 150), (300, 75), (150, 75)]),  # 80 x 40 x 20 mm
])
def test_overview_panels_keep_the_physical_aspect(tmp_path, spacing, expected):
    scan = np.zeros((40, 40, 20), np.float32)  # an all-zero scan draws black panels on the white page
    figures.overview(tmp_path / "o.png", scan, {}, (20, 20, 10), spacing=spacing)
    assert _panels(tmp_path / "o.png") == expected


def _columns(rgb: np.ndarray, n: int) -> list[np.ndarray]:
    """The picture cut into the n panel columns of an overview (PANEL wide, GAP apart)."""
    x0 = figures.PAD
    return [rgb[:, x0 + k * (figures.PANEL + figures.GAP): x0 + k * (figures.PANEL + figures.GAP) + figures.PANEL]
            for k in range(n)]


def test_overview_scan_column_then_method_columns_with_colours_and_outlines(tmp_path):
    rng = np.random.default_rng(0)
    scan = rng.uniform(100, 200, (48, 48, 32)).astype(np.float32)
    hot = np.zeros_like(scan)
    hot[10:20, 10:20, 10:20] = 1.0  # fully hot cube: jet's 1.0 is dark red (128, 0, 0)
    tumour = np.zeros(scan.shape, bool)
    tumour[30:40, 30:40, 12:20] = True
    predicted = np.zeros(scan.shape, bool)
    predicted[8:22, 8:22, 8:22] = True
    figures.overview(tmp_path / "o.png", scan, {"a": hot, "b": hot * 0.5}, (15, 15, 15), title="t\nsecond line",
                     contour=tumour, predicted=predicted, colormap="jet", notes={"a": "steps 32"})
    rgb = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    assert rgb.shape[1] > 3 * figures.PANEL and rgb.shape[0] > 3 * figures.PANEL
    scan_col, a_col, b_col = _columns(rgb, 3)
    # dark red blended over grey at ALPHA: red clearly above green and blue
    reddish = [((c[..., 0] - c[..., 1] > 40) & (c[..., 0] - c[..., 2] > 40)).sum() for c in (scan_col, a_col, b_col)]
    # 0.5 is jet's green-cyan (~(124, 255, 123)): green above red and blue
    greenish = [((c[..., 1] - c[..., 0] > 40) & (c[..., 1] - c[..., 2] > 40)).sum() for c in (scan_col, a_col, b_col)]
    assert reddish[1] > 1000 and reddish[0] == 0 and reddish[2] == 0
    assert greenish[2] > 1000 and greenish[0] == 0 and greenish[1] == 0
    white = [(c == 255).all(axis=-1).sum() for c in (scan_col, a_col, b_col)]
    cyan = [(c == figures.PREDICTED_OUTLINE).all(axis=-1).sum() for c in (scan_col, a_col, b_col)]
    assert min(white) > 40 and min(cyan) > 40  # both outlines on every column, the scan's too
    # the colour bar right of the panels: jet's own colours, 1 at the top, over most of the grid's height
    lut = np.rint(figures.colours.lut("jet")).astype(int)
    right = rgb[:, figures.PAD + 3 * (figures.PANEL + figures.GAP):]
    code = lambda a: (a[..., 0] * 256 + a[..., 1]) * 256 + a[..., 2]  # noqa: E731
    in_lut = np.isin(code(right), code(lut))
    bar_rows = [y for y in range(right.shape[0]) if in_lut[y].sum() >= 14]  # (the bar is 16 px wide)
    assert len(bar_rows) > 100
    top_colour, bottom_colour = (right[y][np.flatnonzero(in_lut[y])[0]] for y in (bar_rows[0], bar_rows[-1]))
    assert top_colour[0] > top_colour[2] and bottom_colour[2] > bottom_colour[0]  # dark red above, dark blue below
    below = rgb[-40:]  # the legend: a swatch of each outline colour
    for colour in (figures.TRUE_OUTLINE, figures.PREDICTED_OUTLINE):
        assert (below == colour).all(axis=-1).sum() > 0


def test_maps_stop_at_the_edge_of_the_brain(tmp_path):
    scan = np.zeros((40, 40, 20), np.float32)
    scan[10:30, 10:30, 5:15] = 150.0  # the brain; zero around it (a skull-stripped scan's air)
    everywhere = np.ones(scan.shape, np.float32)
    figures.overview(tmp_path / "o.png", scan, {"m": everywhere}, (20, 20, 10), colormap="jet")
    rgb = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    panel = _columns(rgb, 2)[1]
    coloured = (np.abs(panel[..., 0] - panel[..., 2]) > 40)
    black = panel.max(axis=-1) < 10
    assert coloured.sum() > 1000 and black.sum() > coloured.sum()  # the air around the brain stays black


def _white_glyph(text: str, size: int = 12) -> np.ndarray:
    """The near-white pixels of `text` as the figures draw a letter (Pillow's default font, a dark
    stroke), cropped to their bounding box."""
    from PIL import ImageDraw, ImageFont

    canvas = Image.new("RGB", (60, 60), (0, 0, 0))
    ImageDraw.Draw(canvas).text((20, 20), text, fill=(255, 255, 255), font=ImageFont.load_default(size),
                                stroke_width=2, stroke_fill=(0, 0, 0))
    mask = np.asarray(canvas).min(axis=-1) >= 200
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _has_glyph(region: np.ndarray, glyph: np.ndarray) -> bool:
    mask = region.min(axis=-1) >= 200
    h, w = glyph.shape
    return any((mask[y:y + h, x:x + w] == glyph).all() and mask[y:y + h, x:x + w].sum() == glyph.sum()
               for y in range(mask.shape[0] - h + 1) for x in range(mask.shape[1] - w + 1))


@pytest.mark.parametrize("convention", ["neurological", "radiological"])
def test_orientation_letters_sit_on_the_anatomy_the_affine_names(tmp_path, convention):
    """A block in the patient's right hemisphere, the scan stored RAS and as a flipped LPS copy: the
    axial panel shows the block on the side lettered R (right in neurological, left in radiological
    convention), A at the top, P at the bottom, and both files draw the very same picture."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    scan = np.zeros((40, 44, 20), np.float32)
    scan[6:34, 6:38, 4:16] = 120.0
    right = np.zeros_like(scan)
    right[26:32, 18:26, 8:12] = 1.0  # RAS voxel order: large x is the patient's right
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20, -22, -10]
    lps = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    moved = nib.Nifti1Image(scan, affine).as_reoriented(lps)
    moved_map = np.asarray(nib.Nifti1Image(right, affine).as_reoriented(lps).dataobj)
    center = (20.0, 22.0, 10.0)
    c2 = (np.linalg.inv(moved.affine) @ affine @ np.append(center, 1))[:3]
    pictures = []
    for name, data, m, aff, c in (("ras", scan, right, affine, center),
                                  ("lps", np.asarray(moved.dataobj), moved_map, moved.affine, c2)):
        figures.overview(tmp_path / f"{name}.png", data, {"m": m}, tuple(c), affine=aff, colormap="jet",
                         convention=convention)
        pictures.append(np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).astype(int))
    # the same picture but for the row captions' voxel indices (the files count slices from opposite ends)
    np.testing.assert_array_equal(_columns(pictures[0], 2)[1], _columns(pictures[1], 2)[1])
    rgb = pictures[0]
    panel = _columns(rgb, 2)[1]
    rows = np.flatnonzero((panel.max(axis=-1) < 10).sum(axis=1) > 100)
    axial = panel[rows[0]:rows[0] + figures.PANEL]  # the first row: 44 mm of 44 fill the panel's height
    coloured = np.abs(axial[..., 0] - axial[..., 2]) > 40
    xs = np.flatnonzero(coloured.any(axis=0))
    block_on_right = xs.mean() > figures.PANEL / 2
    assert block_on_right == (convention == "neurological")
    w = figures.PANEL
    mid = axial[figures.PANEL // 2 - 20: figures.PANEL // 2 + 20]
    right_letter, left_letter = ("R", "L") if convention == "neurological" else ("L", "R")
    assert _has_glyph(mid[:, w - 24:], _white_glyph(right_letter))
    assert _has_glyph(mid[:, :24], _white_glyph(left_letter))
    assert not _has_glyph(mid[:, w - 24:], _white_glyph(left_letter))
    assert _has_glyph(axial[:24, w // 2 - 20: w // 2 + 20], _white_glyph("A"))
    assert _has_glyph(axial[-24:, w // 2 - 20: w // 2 + 20], _white_glyph("P"))


def test_slice_caption_gives_the_voxel_index_and_the_world_coordinate():
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    shape = (182, 218, 91)
    assert figures.slice_caption("axial", (10, 20, 30.4), shape, affine) == "axial: slice 31 of 91, z = -12.0 mm"
    assert figures.slice_caption("sagittal", (10, 20, 30), shape, affine) == "sagittal: slice 11 of 182, x = +80.0 mm"


def test_edges_are_the_mask_border():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    edges = figures.mask_edges(mask)
    assert edges.sum() == 12 and not edges[3:5, 3:5].any() and edges[2, 2:6].all()


def test_layer_grid_one_panel_per_layer_with_its_colour_bar_and_the_zero_layer_marked(tmp_path):
    scan = np.zeros((30, 30, 10), np.float32)
    scan[3:27, 3:27] = 100.0
    maps = [np.full(scan.shape, v, np.float32) for v in (0.0, 0.3, 0.6, 0.9, 1.0, 0.2, 0.4)]
    figures.layer_grid(tmp_path / "l.png", scan, maps, [f"conv{k}" for k in range(7)], (15, 15, 5),
                       title="case: Grad-CAM per layer, target HGG", scales=[0, 1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3])
    img = np.asarray(Image.open(tmp_path / "l.png").convert("RGB")).astype(int)
    assert img.shape[1] > 5 * 240 and img.shape[0] > 2 * 240  # 5 columns, 2 rows
    red = (img[..., 0] > 200) & (img[..., 1] < 70) & (img[..., 2] < 70)
    cell = 240 + figures.GAP
    per_cell = [red[:, figures.PAD + k * cell: figures.PAD + k * cell + 240].sum() for k in range(5)]
    assert per_cell[0] > 500 and max(per_cell[1:]) == 0  # only the all-zero layer (the first) is marked
    # a colour bar under every panel: the map's own colours from 0 to 1, seven times
    ramp = figures.colours.apply(np.linspace(0, 1, 240, dtype=np.float32)).astype(int)
    rows_with_bar = [y for y in range(img.shape[0]) if np.abs(img[y, figures.PAD:figures.PAD + 240] - ramp).max() <= 1]
    assert len(rows_with_bar) >= 2 * 8  # 8 px tall, in both rows of layers


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "S", "L"), ("I", "R", "A")])
def test_a_reoriented_file_gives_the_same_picture(tmp_path, codes):
    """The same scan stored in another voxel order (nibabel's as_reoriented: same world data, new
    affine) draws the very same overview: the views are taken from the affine, not the order."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    rng = np.random.default_rng(5)
    scan = rng.uniform(100, 200, (30, 24, 18)).astype(np.float32)
    scan[:, :, :3] = 0  # an asymmetric picture: flips and transposes would show
    hot = np.zeros_like(scan)
    hot[5:12, 14:20, 9:15] = np.linspace(0.2, 1, 6)[None, :, None]
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    center = np.array([10.0, 16.0, 11.0])

    def draw(name, data, mask, aff, c):
        spacing = np.linalg.norm(aff[:3, :3], axis=0)
        figures.overview(tmp_path / name, data, {"m": mask}, tuple(c), title="t", spacing=spacing, affine=aff)
        return np.asarray(Image.open(tmp_path / name).convert("RGB"))

    want = draw("ras.png", scan, hot, affine, center)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
    moved = nib.Nifti1Image(scan, affine).as_reoriented(transform)
    moved_hot = nib.Nifti1Image(hot, affine).as_reoriented(transform)
    assert nib.aff2axcodes(moved.affine) == codes
    c2 = (np.linalg.inv(moved.affine) @ affine @ np.append(center, 1))[:3]
    got = draw("moved.png", np.asarray(moved.dataobj), np.asarray(moved_hot.dataobj), moved.affine, c2)
    # the same picture but for the row captions' voxel indices (each file counts its own voxels)
    np.testing.assert_array_equal(got.shape, want.shape)
    np.testing.assert_array_equal(_columns(got, 2)[1], _columns(want, 2)[1])


def test_axial_is_the_voxel_axis_nearest_superior():
    from nxrt.imaging.orientation import view_axis, view_of_axis

    psl = np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # voxel axes: P, S, L
    assert [view_axis(v, psl) for v in ("sagittal", "coronal", "axial")] == [2, 0, 1]
    assert [view_of_axis(a, psl) for a in range(3)] == ["coronal", "axial", "sagittal"]
    assert [view_axis(v, None) for v in ("sagittal", "coronal", "axial")] == [0, 1, 2]
