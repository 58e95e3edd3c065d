"""An existing case folder and a new run: methods added (never lost), resume that knows what was
asked, another model refused, a case another live run holds refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import onnx
from PIL import Image

from tests.builders import run_cli, write_case


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def one_line_error(res, *words):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_second_run_adds_its_methods_and_keeps_the_first_runs(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    out = tmp_path / "out"
    assert run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "gradcam", "-o", out).returncode == 0
    first = nib.load(str(out / "c1" / "gradcam.nii.gz")).get_fdata()
    single_width = Image.open(out / "c1" / "overview.png").size[0]

    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out)
    assert res.returncode == 0, res.stderr
    case = out / "c1"
    np.testing.assert_array_equal(nib.load(str(case / "gradcam.nii.gz")).get_fdata(), first)
    assert (case / "vanilla.nii.gz").exists() and (case / "vanilla_map.nii.gz").exists()
    s = summary(case)
    assert list(s["methods"]) == ["gradcam", "vanilla"]
    assert len(s["provenance"]["earlier_runs"]) == 1 and "gradcam" in s["provenance"]["earlier_runs"][0]["command"]
    assert Image.open(case / "overview.png").size[0] > single_width  # both methods drawn: one more column
    assert not [p for p in out.iterdir() if ".partial" in p.name or ".old" in p.name]

    # the same method again: refused without a flag, kept by --resume, recomputed by --overwrite
    one_line_error(run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out), "already has vanilla",
                   "--overwrite", "--resume")
    inode = (case / "gradcam.nii.gz").stat().st_ino
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-m", "gradcam", "-o", out, "--resume")
    assert res.returncode == 0 and "skipped" in res.stdout + res.stderr, res.stderr
    assert (case / "gradcam.nii.gz").stat().st_ino == inode  # nothing was rewritten
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert list(summary(case)["methods"]) == ["gradcam", "vanilla"]  # --overwrite replaced vanilla only
    np.testing.assert_array_equal(nib.load(str(case / "gradcam.nii.gz")).get_fdata(), first)


def test_resume_computes_only_what_is_missing_and_refuses_other_parameters(tmp_path, seg_onnx):
    for k in (1, 2):
        write_case(tmp_path / f"c{k}", f"c{k}")
    out = tmp_path / "out"
    cases = [tmp_path / "c1", tmp_path / "c2"]
    assert run_cli("explain", seg_onnx, *cases, "-m", "ig", "-p", "ig.steps=4", "-o", out).returncode == 0
    before = {k: (out / f"c{k}" / "integrated_gradients.nii.gz").stat().st_ino for k in (1, 2)}

    res = run_cli("explain", seg_onnx, *cases, "-m", "ig", "-m", "vanilla", "-p", "ig.steps=4", "-o", out, "--resume")
    assert res.returncode == 0, res.stderr
    for k in (1, 2):
        case = out / f"c{k}"
        assert sorted(summary(case)["methods"]) == ["integrated_gradients", "vanilla"]
        assert (case / "integrated_gradients.nii.gz").stat().st_ino == before[k]  # kept, not computed again
        assert summary(case)["methods"]["vanilla"]["asked"]["target"] is None

    res = run_cli("explain", seg_onnx, *cases, "-m", "ig", "-p", "ig.steps=8", "-o", out, "--resume")
    assert res.returncode == 2, res.stderr  # both cases failed, each with its one line
    assert res.stdout.count("has integrated_gradients with steps=4 (this run asks 8)") == 2, res.stdout
    res = run_cli("explain", seg_onnx, cases[0], "-m", "vanilla", "-t", "1", "-o", out, "--resume")
    one_line_error(res, "has vanilla for target None (this run asks [1])")


def test_another_model_is_refused_unless_overwrite_replaces_the_case(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    out = tmp_path / "out"
    assert run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-m", "gradcam", "-o", out).returncode == 0
    other = onnx.load(str(seg_onnx))
    w = onnx.numpy_helper.to_array(other.graph.initializer[0]) * 2
    other.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, other.graph.initializer[0].name))
    onnx.save(other, str(tmp_path / "other.onnx"))
    for flag in ((), ("--resume",)):
        res = run_cli("explain", tmp_path / "other.onnx", tmp_path / "c1", "-m", "vanilla", "-o", out, *flag)
        one_line_error(res, "made by another model", str(seg_onnx), "--overwrite")
    res = run_cli("explain", tmp_path / "other.onnx", tmp_path / "c1", "-m", "vanilla", "-o", out, "--overwrite")
    assert res.returncode == 0, res.stderr
    s = summary(out / "c1")
    assert list(s["methods"]) == ["vanilla"] and not (out / "c1" / "gradcam.nii.gz").exists()
    assert s["provenance"]["model"]["path"] == str((tmp_path / "other.onnx").resolve())


def test_a_case_another_live_run_writes_is_refused_in_one_line(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    out = tmp_path / "out"
    slow = subprocess.Popen([sys.executable, "-m", "nxrt.cli", "explain", str(seg_onnx), str(tmp_path / "c1"),
                             "-m", "gig", "-p", "gig.steps=3000", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(".partial" in p.name for p in (out.iterdir() if out.exists() else [])):
        time.sleep(0.05)
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out)
    stdout, stderr = slow.communicate(timeout=300)
    one_line_error(res, f"{out / 'c1'} is being written by another nxrt run (pid {slow.pid})", "--resume")
    assert slow.returncode == 0, stderr
    assert list(summary(out / "c1")["methods"]) == ["guided_ig"]
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out, "--resume")
    assert res.returncode == 0, res.stderr
    assert list(summary(out / "c1")["methods"]) == ["guided_ig", "vanilla"]
