"""`nxrt explain` end to end on NIfTI cases: geometry round trip, naming schemes, errors, cohorts, figure."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

import nxrt
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import prepare, to_image_channels_last
from tests.builders import CHANNELS, IMAGE_GRID, MODEL_GRID, oblique_affine, run_cli, write_case


def test_geometry_round_trip_lands_on_the_right_world_coordinate(tmp_path):
    data = write_case(tmp_path / "c", "case")
    case = load_case(tmp_path / "c", channels=CHANNELS)
    marker = (15, 3, 9)  # an image voxel inside the region that survives the crop
    case.data[marker] = 1000.0
    x, geometry = prepare(case.data, MODEL_GRID, "channels_first", "none")
    found = np.unravel_index(np.argmax(x[0, 0]), MODEL_GRID)  # where the marker is in model space
    attr = np.zeros_like(x[0])
    attr[:, found[0], found[1], found[2]] = 1.0  # an attribution at that model voxel...
    back = to_image_channels_last(attr, "channels_first", geometry)
    hit = np.unravel_index(np.argmax(back[..., 0]), IMAGE_GRID)
    assert back.shape == IMAGE_GRID + (4,)
    assert hit == marker  # ...maps back to the marker's voxel
    world = case.affine @ np.append(hit, 1.0)  # world mm of the attribution as a viewer shows it
    np.testing.assert_allclose(world[:3], (oblique_affine() @ np.append(marker, 1.0))[:3])
    assert data.shape == IMAGE_GRID + (4,)


@pytest.mark.parametrize("image_shape, model_shape", [((50, 60, 33), (40, 64, 32)), ((20, 21, 22), (32, 16, 8)),
                                                       ((30, 30), (20, 40))])
def test_lazy_image_grid_equals_the_full_inverse_crop(tmp_path, image_shape, model_shape):
    """InImageGrid (the writer's and the figure's view of a model-space map) gives the same bytes,
    slices and NIfTI files as building the whole image-grid array."""
    from nxrt.imaging.preprocess import Geometry, InImageGrid
    from nxrt.imaging.writer import save_nifti

    rng = np.random.default_rng(0)
    geometry = Geometry.centred(image_shape, model_shape)
    for trailing in ((), (3,)):
        volume = rng.standard_normal(model_shape + trailing).astype(np.float32)
        lazy, full = InImageGrid(volume, geometry), geometry.to_image(volume)
        assert lazy.shape == full.shape and np.array_equal(np.asarray(lazy), full)
        for axis, n in enumerate(image_shape):
            for k in (0, n // 2, n - 1):
                key = tuple(k if a == axis else slice(None) for a in range(len(image_shape)))
                assert np.array_equal(lazy[key], full[key]), (axis, k)
        streamed = np.concatenate([b.T.reshape(-1) for b in lazy.fortran_blocks(block_bytes=1000)])
        assert np.array_equal(streamed, full.T.reshape(-1))
        affine = oblique_affine()
        header = nib.Nifti1Header()
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=2)
        for name, data in (("full.nii.gz", full), ("lazy.nii.gz", lazy), ("lazy.nii", lazy)):
            save_nifti(tmp_path / name, data, affine, header)
            back = nib.load(str(tmp_path / name))
            assert np.array_equal(np.asarray(back.dataobj), full) and np.allclose(back.affine, affine)
        # byte-identical files once inflated (the gzip members are cut differently)
        import gzip

        assert gzip.decompress((tmp_path / "full.nii.gz").read_bytes()) == (tmp_path / "lazy.nii").read_bytes()


def test_loaded_voxels_equal_nibabels_for_scaled_big_endian_and_float_files(tmp_path):
    """Cases are read from the files' bytes directly when nothing is scaled; scaled (scl_slope /
    scl_inter), big-endian and float files must still load exactly as nibabel reads them."""
    rng = np.random.default_rng(3)
    base = rng.integers(-200, 3000, IMAGE_GRID).astype(np.int16)
    files = {}
    scaled = nib.Nifti1Image(base, oblique_affine())
    scaled.header.set_slope_inter(0.5, 10.0)
    files["flair"] = scaled
    files["t1"] = nib.Nifti1Image(base.astype(">i2"), oblique_affine())
    files["t1ce"] = nib.Nifti1Image(base.astype(np.float32) / 7, oblique_affine())
    files["t2"] = nib.Nifti1Image(base.astype(np.uint16) if base.min() >= 0 else base, oblique_affine())
    for name, img in files.items():
        nib.save(img, str(tmp_path / f"case_{name}{'.nii' if name == 't1' else '.nii.gz'}"))
    case = load_case(tmp_path / "case", channels=CHANNELS)
    for k, name in enumerate(CHANNELS):
        path = next(tmp_path.glob(f"case_{name}.nii*"))
        np.testing.assert_array_equal(case.data[..., k], nib.load(str(path)).get_fdata(dtype=np.float32))


def test_channel_argmax_equals_numpy_argmax_ties_included():
    from nxrt.postprocess import channel_argmax

    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, (4, 9, 10, 11)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(channel_argmax(scores, 0), np.argmax(scores, axis=0))
    last = np.moveaxis(scores, 0, -1).copy()
    np.testing.assert_array_equal(channel_argmax(last, -1), np.argmax(last, axis=-1))


def test_explain_outputs_overlay_the_scan(seg_onnx, tmp_path):
    write_case(tmp_path / "BraTS2021_00001", "BraTS2021_00001")
    out = tmp_path / "out"
    res = run_cli("explain", seg_onnx, tmp_path / "BraTS2021_00001", "-m", "vanilla", "-m", "gradcam", "-o", out)
    assert res.returncode == 0, res.stderr
    d = out / "BraTS2021_00001"
    names = sorted(p.name for p in d.iterdir())
    assert names == ["gradcam.nii.gz", "gradcam_map.nii.gz", "overview.png", "prediction.nii.gz", "report.html",
                     "summary.json", "thumbnail.png", "vanilla.nii.gz", "vanilla_map.nii.gz"]
    src = nib.load(str(tmp_path / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"))
    for name, shape in (("vanilla", IMAGE_GRID + (4,)), ("gradcam", IMAGE_GRID + (1,)),
                        ("vanilla_map", IMAGE_GRID), ("prediction", IMAGE_GRID)):
        img = nib.load(str(d / f"{name}.nii.gz"))
        assert img.shape == shape, name
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        assert img.header.get_xyzt_units() == ("mm", "unknown")  # the scan's mm; a map's 4th axis is not time
    m = np.asarray(nib.load(str(d / "vanilla_map.nii.gz")).dataobj)
    assert 0 <= m.min() and m.max() == pytest.approx(1.0)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["methods"]["vanilla"]["target"] == [1, 2]
    assert len(summary["methods"]["gradcam"]["centroid_mm"]) == 3
    assert 0 <= summary["methods"]["vanilla"]["share_in_true_tumour"] <= 1
    # the raw attribution equals the Python API's on the same preprocessed input, mapped back
    ex = nxrt.Explainer(seg_onnx)
    case = load_case(tmp_path / "BraTS2021_00001", channels=CHANNELS)
    x, geometry = prepare(case.data, MODEL_GRID, "channels_first", "zscore")
    want = to_image_channels_last(ex.explain(x, "vanilla")[0], "channels_first", geometry)
    raw = np.asarray(nib.load(str(d / "vanilla.nii.gz")).dataobj)
    np.testing.assert_allclose(raw, want, rtol=1e-6, atol=1e-9)
    # the summary's numbers (computed on the model's crop) equal the same numbers recomputed here
    # from the written image-grid files
    magnitude = np.abs(raw).sum(axis=-1, dtype=np.float64)
    flat = np.sort(magnitude.ravel())
    top = flat[int(round(0.99 * (flat.size - 1)))]
    np.testing.assert_allclose(m, np.minimum(magnitude, top) / top, rtol=1e-5, atol=1e-7)
    entry = summary["methods"]["vanilla"]
    com = np.array([(magnitude.sum(axis=tuple(a for a in range(3) if a != k)) * np.arange(n)).sum()
                    for k, n in enumerate(IMAGE_GRID)]) / magnitude.sum()
    np.testing.assert_allclose(entry["centroid_mm"], (src.affine @ np.append(com, 1.0))[:3], atol=2e-3)
    seg = np.asarray(nib.load(str(tmp_path / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz")).dataobj)
    pred = np.asarray(nib.load(str(d / "prediction.nii.gz")).dataobj)
    assert entry["share_in_true_tumour"] == pytest.approx(magnitude[seg > 0].sum() / magnitude.sum(), rel=1e-5)
    assert entry["share_in_predicted_tumour"] == pytest.approx(magnitude[pred > 0].sum() / magnitude.sum(), rel=1e-5)
    brain = np.any(case.data != 0, axis=-1)
    assert entry["true_tumour_share_of_brain"] == pytest.approx((seg > 0).sum() / brain.sum())
    labels, counts = np.unique(pred, return_counts=True)
    assert summary["prediction"]["voxels_per_label"] == {str(v): int(n) for v, n in zip(labels, counts, strict=True)}


def test_overview_png_is_a_real_picture(seg_onnx, tmp_path):
    import matplotlib.image as mpimg

    write_case(tmp_path / "c1", "c1")
    out = tmp_path / "out"
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-m", "ig", "--steps", "4", "-o", out)
    assert res.returncode == 0, res.stderr
    img = mpimg.imread(str(out / "c1" / "overview.png"))
    h, w = img.shape[:2]
    assert h > 300 and w > 600
    rgb = img[..., :3]
    colourful = np.abs(rgb[..., 0] - rgb[..., 2]) > 0.2  # jet overlay pixels (gray background has r == b)
    for row in range(2):  # two methods -> two rows of three panels, each with overlay pixels
        band = colourful[int(h * (0.08 + 0.45 * row)):int(h * (0.5 + 0.45 * row)), : int(w * 0.88)]
        for col in range(3):
            assert band[:, int(col * w * 0.29):int((col + 1) * w * 0.29)].sum() > 20, (row, col)


def test_naming_schemes_give_identical_attributions(seg_onnx, tmp_path):
    data = np.random.default_rng(5).uniform(0.5, 2, IMAGE_GRID + (4,)).astype(np.float32)
    write_case(tmp_path / "a", "BraTS2021_00002", "2021", data.copy())
    write_case(tmp_path / "b", "BraTS-GLI-00002-000", "2023", data.copy())
    four_d = data.copy()
    four_d[:2] = 0
    nib.save(nib.Nifti1Image(four_d, oblique_affine()), str(tmp_path / "case4d.nii.gz"))
    outs = {}
    cases = {"2021": [tmp_path / "a"], "2023": [tmp_path / "b" / "BraTS-GLI-00002-000"],
             "4d": [tmp_path / "case4d.nii.gz"],
             "channel": ["--channel", f"flair={tmp_path / 'a' / 'BraTS2021_00002_flair.nii.gz'}",
                         "--channel", f"t1={tmp_path / 'a' / 'BraTS2021_00002_t1.nii.gz'}",
                         "--channel", f"t1ce={tmp_path / 'a' / 'BraTS2021_00002_t1ce.nii.gz'}",
                         "--channel", f"t2={tmp_path / 'a' / 'BraTS2021_00002_t2.nii.gz'}"]}
    for key, args in cases.items():
        out = tmp_path / f"out_{key}"
        res = run_cli("explain", seg_onnx, *args, "-m", "vanilla", "-o", out)
        assert res.returncode == 0, (key, res.stderr)
        (d,) = list(out.iterdir())
        outs[key] = np.asarray(nib.load(str(d / "vanilla.nii.gz")).dataobj)
    for key in ("2023", "4d", "channel"):
        np.testing.assert_array_equal(outs[key], outs["2021"])


def _bad_inputs(tmp_path, seg_onnx):
    good = tmp_path / "good"
    write_case(good, "good")
    cases = {}
    cases["missing path"] = ([seg_onnx, tmp_path / "nope"], "no such file")
    (tmp_path / "notes.txt").write_text("hello")
    cases["non-NIfTI file"] = ([seg_onnx, tmp_path / "notes.txt"], "not a NIfTI file")
    (tmp_path / "bad.onnx").write_bytes(b"junk" * 50)
    cases["corrupt ONNX"] = ([tmp_path / "bad.onnx", good], "not a readable ONNX model")
    miss = tmp_path / "miss"
    write_case(miss, "miss")
    (miss / "miss_t1ce.nii.gz").unlink()
    cases["missing modality"] = ([seg_onnx, miss], "missing modality t1ce")
    shp = tmp_path / "shp"
    write_case(shp, "shp")
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), oblique_affine()), str(shp / "shp_t2.nii.gz"))
    cases["mismatched shapes"] = ([seg_onnx, shp], "shp_t2.nii.gz: shape (5, 5, 5) differs")
    aff = tmp_path / "aff"
    write_case(aff, "aff")
    nib.save(nib.Nifti1Image(np.ones(IMAGE_GRID, np.float32), np.eye(4)), str(aff / "aff_t1.nii.gz"))
    cases["mismatched affines"] = ([seg_onnx, aff], "aff_t1.nii.gz: affine differs")
    nan = tmp_path / "nan"
    d = write_case(nan, "nan")
    d[3, 3, 3, 0] = np.nan
    nib.save(nib.Nifti1Image(d[..., 0], oblique_affine()), str(nan / "nan_flair.nii.gz"))
    cases["NaN voxels"] = ([seg_onnx, nan], "1 NaN/Inf voxel(s)")
    cases["unknown method"] = ([seg_onnx, good, "-m", "magic"], "unknown method 'magic'")
    cases["unknown layer"] = ([seg_onnx, good, "-m", "gradcam", "--layer", "zz"], "unknown layer 'zz'; candidates: c")
    cases["target out of range"] = ([seg_onnx, good, "-t", "3"], "target 3 is out of range")
    if os.geteuid() == 0:  # root ignores permission bits: a folder below a regular file cannot be made
        (tmp_path / "afile").write_text("x")
        unwritable = tmp_path / "afile" / "sub"
    else:
        unwritable = tmp_path / "readonly"
        unwritable.mkdir()
        os.chmod(unwritable, 0o500)
    cases["unwritable output folder"] = ([seg_onnx, good, "-o", unwritable], "not writable")
    return cases


def test_every_bad_input_is_one_line_exit_2_no_partial_output(seg_onnx, tmp_path):
    cases = _bad_inputs(tmp_path, seg_onnx)
    for label, (args, message) in cases.items():
        out = tmp_path / f"out_{label.replace(' ', '_')}"
        extra = [] if "-o" in args else ["-o", out]
        res = run_cli("explain", *args, *extra)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (label, res.stderr)
        assert len(lines) == 1 and message in lines[0], (label, res.stderr)
        assert "Traceback" not in res.stderr
        if out.exists():
            assert not [p for p in out.rglob("*") if p.is_file()], label  # nothing half-written


def test_cohort_isolates_failures_and_resume_finishes_the_rest(seg_onnx, tmp_path):
    for name in ("p1", "p2", "p3"):
        write_case(tmp_path / name, name)
    (tmp_path / "p2" / "p2_t2.nii.gz").write_bytes(b"not gzip at all")
    out = tmp_path / "out"
    res = run_cli("explain", seg_onnx, tmp_path / "p1", tmp_path / "p2", tmp_path / "p3", "-m", "vanilla", "-o", out)
    assert res.returncode == 1, res.stderr
    assert "p2" in res.stdout and "FAILED" in res.stdout and "2 of 3 case(s) done" in res.stdout
    assert (out / "p1" / "summary.json").exists() and (out / "p3" / "summary.json").exists()
    assert not (out / "p2").exists()
    # an interrupted run: p3 lost, a stale staging folder left behind
    stamp = (out / "p1" / "vanilla.nii.gz").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "p3")
    (out / ".p3.partial99999").mkdir()
    again = run_cli("explain", seg_onnx, tmp_path / "p1", tmp_path / "p3", "-m", "vanilla", "-o", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert "skipped (finished)" in again.stdout
    assert (out / "p1" / "vanilla.nii.gz").stat().st_mtime_ns == stamp
    assert (out / "p3" / "summary.json").exists()
    # without --overwrite nothing existing is replaced
    third = run_cli("explain", seg_onnx, tmp_path / "p1", "-m", "vanilla", "-o", out)
    assert third.returncode == 2 and "--overwrite" in third.stderr
    assert run_cli("explain", seg_onnx, tmp_path / "p1", "-m", "vanilla", "-o", out, "--overwrite").returncode == 0


def test_method_aliases_keep_their_parameters(seg_onnx, tmp_path):
    """`-m ig --steps 3` is integrated_gradients with 3 steps (an alias once lost its parameters)."""
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "ig", "--steps", "3", "-m", "sg", "--samples", "2",
                  "-m", "integrated_gradients", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    methods = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())["methods"]
    assert list(methods) == ["integrated_gradients", "smoothgrad"]  # the repeated method runs once
    assert methods["integrated_gradients"]["params"]["steps"] == 3
    assert methods["smoothgrad"]["params"]["samples"] == 2
    bad = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "ig", "--steps", "0", "-o", tmp_path / "out2")
    assert bad.returncode == 2 and "steps must be an integer >= 1" in bad.stderr


def test_figure_options_reach_the_overview(seg_onnx, tmp_path):
    """--per-modality draws one column per method and channel, each over its own scan;
    --convention and --colormap change the picture (their drawing is checked in test_figures)."""
    from PIL import Image

    from nxrt.imaging import figures

    write_case(tmp_path / "c1", "c1")

    def overview(*options):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-m", "gradcam", "-o", out, *options)
        assert res.returncode == 0, res.stderr
        return np.asarray(Image.open(out / "c1" / "overview.png").convert("RGB")).astype(int)

    plain, split = overview(), overview("--per-modality")
    step = figures.PANEL + figures.GAP
    # scan, vanilla, gradcam vs scan, vanilla per channel (4), gradcam (no channel axis: one column)
    assert plain.shape[1] < 4 * step < 6 * step < split.shape[1]
    columns = [split[:, figures.PAD + k * step: figures.PAD + k * step + figures.PANEL] for k in range(1, 5)]
    assert all(np.abs(columns[0] - c).sum() > 0 for c in columns[1:])  # each channel over its own scan
    radiological, jet = overview("--convention", "radiological"), overview("--colormap", "jet")
    assert radiological.shape == plain.shape and jet.shape == plain.shape
    assert np.abs(radiological - plain).sum() > 0 and np.abs(jet - plain).sum() > 0


def test_an_index_that_cannot_be_written_is_a_warning_not_a_failure(seg_onnx, tmp_path):
    """OUT/index.html is a convenience: when it cannot be written (here a folder stands in its way)
    the cohort still succeeds, says so in one warning line, and every case page is there."""
    for name in ("c1", "c2"):
        write_case(tmp_path / name, name)
    out = tmp_path / "out"
    (out / "index.html").mkdir(parents=True)
    (out / "index.html" / "keep").write_text("not ours")
    res = run_cli("explain", seg_onnx, tmp_path / "c1", tmp_path / "c2", "-m", "vanilla", "-o", out)
    assert res.returncode == 0, res.stderr
    said = [line for line in res.stderr.splitlines() if "index.html not written" in line]
    assert len(said) == 1 and "Traceback" not in res.stderr
    assert (out / "index.html" / "keep").read_text() == "not ours"
    assert all((out / name / "report.html").exists() for name in ("c1", "c2"))
