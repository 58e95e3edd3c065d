"""The pictures, checked as pictures: colours against matplotlib's 'jet', panels at the scan's
physical aspect, outlines where the mask's border is."""

import numpy as np
import pytest
from PIL import Image

from nxrt.imaging import figures


def test_jet_matches_matplotlib():
    import matplotlib

    values = np.linspace(0, 1, 2001)
    expected = matplotlib.colormaps["jet"](values)[:, :3] * 255
    np.testing.assert_allclose(figures.jet(values), expected, atol=1e-3)


def _panel_extents(png) -> list[tuple[int, int]]:
    """(width, height) of each black panel of a picture, left to right (text is too thin to count)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    black = rgb.max(axis=-1) < 10
    cols = black.sum(axis=0) > 50
    edges = np.flatnonzero(np.diff(np.concatenate([[0], cols.astype(int), [0]])))
    extents = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        rows = np.flatnonzero(black[:, start:stop].sum(axis=1) > 50)
        extents.append((stop - start, rows[-1] - rows[0] + 1))
    return extents


@pytest.mark.parametrize(("spacing", "expected"), [
    ((1.0, 1.0, 1.0), [(256, 256), (256, 128), (256, 128)]),  # 40 x 40 x 20 mm
    ((1.0, 1.0, 3.0), [(171, 171), (171, 256), (171, 256)]),  # 40 x 40 x 60 mm: tall coronal/sagittal
    ((2.0, 1.0, 1.0), [(256, 128), (256, 64), (128, 64)]),  # 80 x 40 x 20 mm
])
def test_overview_panels_keep_the_physical_aspect(tmp_path, spacing, expected):
    scan = np.zeros((40, 40, 20), np.float32)  # an all-zero scan draws black panels on the white page
    figures.overview(tmp_path / "o.png", scan, {}, (20, 20, 10), spacing=spacing)
    assert _panel_extents(tmp_path / "o.png") == expected


def test_overview_rows_colours_and_outline(tmp_path):
    rng = np.random.default_rng(0)
    scan = rng.uniform(100, 200, (48, 48, 32)).astype(np.float32)
    hot = np.zeros_like(scan)
    hot[10:20, 10:20, 10:20] = 1.0  # fully hot cube: jet's 1.0 is dark red (128, 0, 0)
    tumour = np.zeros(scan.shape, bool)
    tumour[30:40, 30:40, 12:20] = True
    figures.overview(tmp_path / "o.png", scan, {"a": hot, "b": hot * 0.5}, (15, 15, 15), title="t",
                     contour=tumour)
    rgb = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    assert rgb.shape[0] > 2 * figures.PANEL and rgb.shape[1] > 3 * figures.PANEL
    # dark red blended over grey at ALPHA: red clearly above green and blue
    reddish = (rgb[..., 0] - rgb[..., 1] > 40) & (rgb[..., 0] - rgb[..., 2] > 40)
    # 0.5 is jet's green-cyan (~(124, 255, 123)): green above red
    greenish = (rgb[..., 1] - rgb[..., 0] > 40) & (rgb[..., 1] - rgb[..., 2] > 40)
    half = rgb.shape[0] // 2
    assert reddish[:half].sum() > 1000 and greenish[half:].sum() > 1000
    assert reddish[half:, :3 * figures.PANEL].sum() < 50  # the second row has no red panel pixels
    assert (rgb == 255).all(axis=-1)[:, : 3 * figures.PANEL].sum() > 0  # white outline pixels


def test_edges_are_the_mask_border():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    edges = figures.mask_edges(mask)
    assert edges.sum() == 12 and not edges[3:5, 3:5].any() and edges[2, 2:6].all()


def test_layer_grid_one_panel_per_layer(tmp_path):
    scan = np.zeros((30, 30, 10), np.float32)
    maps = [np.full(scan.shape, v, np.float32) for v in (0.0, 0.3, 0.6, 0.9, 1.0, 0.2, 0.4)]
    figures.layer_grid(tmp_path / "l.png", scan, maps, [f"conv{k}" for k in range(7)], (15, 15, 5))
    img = np.asarray(Image.open(tmp_path / "l.png").convert("RGB"))
    assert img.shape[1] > 6 * 180 and img.shape[0] > 2 * 180  # 6 columns, 2 rows
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20


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
    np.testing.assert_array_equal(got, want)


def test_axial_is_the_voxel_axis_nearest_superior():
    from nxrt.imaging.orientation import view_axis, view_of_axis

    psl = np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # voxel axes: P, S, L
    assert [view_axis(v, psl) for v in ("sagittal", "coronal", "axial")] == [2, 0, 1]
    assert [view_of_axis(a, psl) for a in range(3)] == ["coronal", "axial", "sagittal"]
    assert [view_axis(v, None) for v in ("sagittal", "coronal", "axial")] == [0, 1, 2]
