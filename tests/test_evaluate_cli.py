"""`nxrt evaluate` / `explain --evaluate`: the metrics in summary.json equal the Python API's on the
same model input; the tumour estimate equals a direct numpy computation on the written display map;
the cohort tables hold every case and method; metric parameters and user errors are one line."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.builders import CHANNELS, run_cli, write_case


def test_single_case_metrics_equal_the_python_api(tmp_path, seg_onnx):
    import nxrt
    from nxrt.evaluation import evaluate
    from nxrt.imaging.cases import load_case
    from nxrt.imaging.inputs import model_input

    write_case(tmp_path / "c1", "c1")
    res = run_cli("evaluate", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", tmp_path / "out",
                  "--metric", "relevance_mass", "--metric", "deletion", "--metric", "sparseness",
                  "-p", "deletion.steps=4", "-p", "deletion.patch_size=3")
    assert res.returncode == 0, res.stderr
    entry = json.loads((tmp_path / "out" / "c1" / "summary.json").read_text())["methods"]["vanilla"]
    ex = nxrt.Explainer(seg_onnx)
    case = load_case(tmp_path / "c1", channels=CHANNELS)
    x, geometry, _, _ = model_input(ex, case)
    e = ex.explain(x, "vanilla")
    want = evaluate(ex, x, e, metrics=["relevance_mass", "deletion", "sparseness"],
                    mask=geometry.to_model(case.seg > 0), deletion={"steps": 4, "patch_size": 3})
    for name in ("relevance_mass", "deletion", "sparseness"):
        assert entry["metrics"][name] == pytest.approx(want[name], rel=1e-6), name
    assert len(entry["metrics"]["deletion_curve"]) == 5
    assert entry["asked"]["metrics"] == {"names": ["deletion", "relevance_mass", "sparseness"],
                                         "params": {"deletion": {"steps": 4, "patch_size": 3}}}


def test_tumour_estimate_is_the_otsu_region_of_the_written_map(tmp_path, seg_onnx):
    from skimage.filters import threshold_otsu

    write_case(tmp_path / "c1", "c1")
    assert run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "gradcam", "--evaluate", "--metric", "auc",
                   "-o", tmp_path / "out").returncode == 0
    d = tmp_path / "out" / "c1"
    est = json.loads((d / "summary.json").read_text())["methods"]["gradcam"]["tumour_estimate"]
    img = nib.load(str(d / "gradcam_map.nii.gz"))
    m = np.asarray(img.dataobj, np.float64)
    region = m > threshold_otsu(m[m > 0])
    truth = np.asarray(nib.load(str(tmp_path / "c1" / "c1_seg.nii.gz")).dataobj) > 0
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert est["volume_ml"] == pytest.approx(region.sum() * voxel_ml, abs=1e-4)
    centroid = (img.affine @ np.append(np.argwhere(region).mean(axis=0), 1))[:3]
    np.testing.assert_allclose(est["centroid_mm"], centroid, atol=2e-3)
    true_centroid = (img.affine @ np.append(np.argwhere(truth).mean(axis=0), 1))[:3]
    assert est["centroid_error_mm"] == pytest.approx(np.linalg.norm(centroid - true_centroid), abs=3e-3)
    assert est["dice"] == pytest.approx(2 * (region & truth).sum() / (region.sum() + truth.sum()), abs=1e-6)
    assert est["volume_error_ml"] == pytest.approx((region.sum() - truth.sum()) * voxel_ml, abs=1e-3)


def test_estimated_region_by_mass_share():
    from nxrt.evaluation.features import estimated_region, region_features

    m = np.zeros((6, 5, 4))
    m[1, 1, 1], m[2, 2, 2], m[3, 3, 3] = 5.0, 3.0, 2.0  # total 10
    assert np.argwhere(estimated_region(m, "mass", 0.5)).tolist() == [[1, 1, 1]]
    assert estimated_region(m, "mass", 0.8).sum() == 2 and estimated_region(m, "mass", 1.0).sum() == 3
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    volume, centroid = region_features(estimated_region(m, "mass", 0.8), affine)
    assert volume == pytest.approx(2 * 12 / 1000) and centroid == pytest.approx([3.0, 3.0, 4.5])


def test_cohort_tables_hold_every_case_and_method(tmp_path, seg_onnx):
    for k in (1, 2, 3):
        write_case(tmp_path / f"p{k}", f"p{k}")
    out = tmp_path / "out"
    res = run_cli("evaluate", seg_onnx, *[tmp_path / f"p{k}" for k in (1, 2, 3)], "-m", "vanilla", "-m", "gradcam",
                  "--metric", "relevance_mass", "--metric", "insertion", "-p", "insertion.steps=3", "-o", out)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["case"], r["method"]) for r in rows] == [(f"p{k}", m) for k in (1, 2, 3) for m in ("vanilla", "gradcam")]
    for r in rows:
        s = json.loads((out / r["case"] / "summary.json").read_text())["methods"][r["method"]]
        assert float(r["relevance_mass"]) == pytest.approx(s["metrics"]["relevance_mass"], rel=1e-12)
        assert float(r["tumour_dice"]) == pytest.approx(s["tumour_estimate"]["dice"], rel=1e-12)
    md = (out / "metrics.md").read_text()
    vals = [float(r["insertion"]) for r in rows if r["method"] == "gradcam"]
    assert f"{np.mean(vals):.3g} ± {np.std(vals, ddof=1):.2g} (n=3)" in md
    assert Image.open(out / "metrics.png").size[0] > 600


def test_metric_errors_are_one_line(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    cases = ((["--metric", "no_such"], "unknown metric 'no_such'"),
             (["--metric", "deletion", "-p", "deletion.nope=1"], "metric 'deletion' has no parameter 'nope'"),
             (["-p", "deletion.steps=3"], "metric parameters need --evaluate or --metric"),
             (["--evaluate", "--metric", "deletion", "-p", "deletion.steps=0"], "deletion: steps must be an integer"),
             (["--evaluate", "-p", "mprt.seed=3"], "metric 'mprt' is not evaluated"),
             (["--metric", "auc", "-p", "deletion.steps=3"], "add --metric deletion"))
    for args, words in cases:
        res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", tmp_path / "out", *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and words in lines[0], res.stderr


def test_a_case_without_truth_evaluates_what_needs_none_and_says_so(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1", with_seg=False)
    res = run_cli("evaluate", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", tmp_path / "out",
                  "--metric", "pointing_game", "--metric", "sparseness")
    assert res.returncode == 0, res.stderr
    assert "no _seg (true tumour) given: pointing_game left out" in res.stderr
    entry = json.loads((tmp_path / "out" / "c1" / "summary.json").read_text())["methods"]["vanilla"]
    assert set(entry["metrics"]) == {"sparseness"} and "dice" not in entry["tumour_estimate"]
    mask = tmp_path / "mask.nii.gz"
    seg = np.zeros(nib.load(str(tmp_path / "c1" / "c1_flair.nii.gz")).shape, np.uint8)
    seg[8:12, 5:9, 6:10] = 1
    nib.save(nib.Nifti1Image(seg, nib.load(str(tmp_path / "c1" / "c1_flair.nii.gz")).affine), str(mask))
    res = run_cli("evaluate", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", tmp_path / "out2",
                  "--metric", "pointing_game", "--mask", mask)
    assert res.returncode == 0, res.stderr
    entry = json.loads((tmp_path / "out2" / "c1" / "summary.json").read_text())["methods"]["vanilla"]
    assert entry["metrics"]["pointing_game"] in (0.0, 1.0) and entry["tumour_estimate"]["true_volume_ml"] > 0


def test_nxrt_metrics_lists_every_registered_metric_with_its_parameters():
    from nxrt.evaluation import metrics
    from nxrt.evaluation.metric import metric_classes

    res = run_cli("metrics")
    assert res.returncode == 0, res.stderr
    names = metrics()
    assert len(names) == 17
    for name in names:
        assert f"\n{name} " in "\n" + res.stdout
        for p in metric_classes()[name].parameters:
            assert f"-p {name}.{p.name}=" in res.stdout
