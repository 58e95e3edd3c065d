"""A new user's first hour: help that answers, targets by label name, a single case that says what
it found, and a resumed cohort whose time-left estimate starts from the measured per-case time."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import onnxruntime as ort

from tests.builders import run_cli, write_case


def test_explain_help_names_every_method_and_alias_and_the_defaults():
    from nxrt.registry import method_classes

    res = run_cli("explain", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # (click wraps lines at spaces; names stay whole)
    for name, cls in method_classes().items():
        assert re.search(rf"\b{re.escape(name)}\b", text), name
        for alias in cls.aliases:
            assert alias in text, alias
    ig = {p.name: p for p in method_classes()["integrated_gradients"].parameters}
    sg = {p.name: p for p in method_classes()["smoothgrad"].parameters}
    assert f"integrated_gradients {ig['steps'].default}" in text
    assert f"smoothgrad {sg['samples'].default}" in text and f"smoothgrad {sg['noise'].default}" in text
    for rule in ig["rule"].choices:  # --rule shows its choices
        assert rule in text


def test_a_target_by_label_name_equals_its_index(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    by_index = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-t", "2", "-o", tmp_path / "a")
    by_name = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-t", "Edema", "-o", tmp_path / "b")
    assert by_index.returncode == 0 and by_name.returncode == 0, (by_index.stderr, by_name.stderr)
    a = nib.load(str(tmp_path / "a" / "c1" / "vanilla.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "b" / "c1" / "vanilla.nii.gz")).get_fdata()
    assert np.abs(a).max() > 0
    np.testing.assert_array_equal(a, b)
    summary = json.loads((tmp_path / "b" / "c1" / "summary.json").read_text())
    assert summary["methods"]["vanilla"]["target"] == [2]

    wrong = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-t", "tumor", "-o", tmp_path / "c")
    lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 2 and len(lines) == 1, wrong.stderr
    assert "'tumor'" in lines[0] and "background (0), core (1), edema (2)" in lines[0]
    assert not (tmp_path / "c" / "c1").exists()


def test_a_single_case_says_what_it_found(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-m", "gradcam", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "out" / "c1"
    summary = json.loads((folder / "summary.json").read_text())
    # the prediction as counted from the written label map; the explained score from onnxruntime
    labels = np.asarray(nib.load(str(folder / "prediction.nii.gz")).dataobj)
    names = {1: "core", 2: "edema"}
    for value, name in names.items():
        assert f"{name} ({value}) {int(np.count_nonzero(labels == value))}" in res.stdout, res.stdout
    assert f"{int(np.count_nonzero(labels))} in all" in res.stdout
    import nxrt
    from nxrt.imaging.cases import load_case
    from nxrt.imaging.inputs import model_input

    ex = nxrt.Explainer(seg_onnx)
    x, *_ = model_input(ex, load_case(tmp_path / "c1", channels=ex.card.channels), None)
    out = ort.InferenceSession(str(seg_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    score = float(out[0, 1:].mean(axis=(1, 2, 3), dtype=np.float64).sum())  # each foreground channel's mean
    found = re.search(r"explained: core \+ edema, score \(mean over the volume\) ([0-9.e+-]+)", res.stdout)
    assert found, res.stdout
    assert abs(float(found.group(1)) - score) <= 5e-4 * score
    for method in ("vanilla", "gradcam"):
        share = summary["methods"][method]["share_in_true_tumour"]
        assert re.search(rf"{method}\s+[0-9.]+ s\s+{share:5.1%} of the map in the true tumour, ", res.stdout)
    assert f"look first at {folder / 'overview.png'}" in res.stdout


def test_a_resumed_cohort_estimates_time_left_from_the_finished_cases(tmp_path, seg_onnx):
    import shutil

    import nxrt
    from nxrt.cohort import CaseRequest, run_cohort

    for k in range(1, 5):
        write_case(tmp_path / f"c{k}", f"c{k}")
    items = [(tmp_path / f"c{k}", tmp_path / f"c{k}") for k in range(1, 5)]
    ex = nxrt.Explainer(seg_onnx)
    out = tmp_path / "out"
    run_cohort(ex, items, out, CaseRequest(["vanilla"]))
    recorded = []
    for k in (1, 2):
        s = json.loads((out / f"c{k}" / "summary.json").read_text())
        recorded.append(s["timings"]["load_and_preprocess_s"] + s["timings"]["forward_s"]
                        + s["methods"]["vanilla"]["seconds"])
    shutil.rmtree(out / "c3")
    shutil.rmtree(out / "c4")
    seen = []
    report = run_cohort(ex, items, out, CaseRequest(["vanilla"], resume=True),
                        progress=lambda k, n, name, method, left: seen.append((k, name, left)))
    assert [o.status for o in report.outcomes] == ["skipped (finished)"] * 2 + ["ok"] * 2
    k, name, left = seen[0]  # the first case computed: two cases to go, at the recorded mean time each
    assert (k, name) == (3, "c3")
    assert left is not None and abs(left - 2 * np.mean(recorded)) < 1e-6
