"""`nxrt demo`: runs offline on the two shipped models and the shipped case, writes every output."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np

from tests.builders import run_cli


def test_nxrt_demo_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "nxrt.cli", "demo", "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "look first at" in res.stdout and "overview.png" in res.stdout
    methods = {"vanilla", "guided_backprop", "integrated_gradients", "guided_ig", "smoothgrad", "gradcam",
               "guided_gradcam"}
    # the user gets a copy of the case to open next to the maps
    assert sorted(p.name for p in (out / "input" / "BraTS-PHANTOM-007").iterdir()) == [
        f"BraTS-PHANTOM-007_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
    for model in ("grader", "segmenter"):
        case = out / model / "BraTS-PHANTOM-007"
        summary = json.loads((case / "summary.json").read_text())
        assert set(summary["methods"]) == methods
        for m in methods:
            assert (case / f"{m}.nii.gz").exists() and (case / f"{m}_map.nii.gz").exists()
        # Grad-CAM looks at the tumour: far more of its mass inside it than the tumour's share of the brain
        gradcam = summary["methods"]["gradcam"]
        assert gradcam["share_in_true_tumour"] > 5 * gradcam["true_tumour_share_of_brain"], model
        img = mpimg.imread(str(case / "overview.png"))
        assert img.shape[0] > 1000 and img.shape[1] > 600 and img[..., :3].std() > 0.05  # 7 rows x 3 views
    assert json.loads((out / "grader" / "BraTS-PHANTOM-007" / "summary.json").read_text())[
        "prediction"]["label"] == "HGG"
    seg = json.loads((out / "segmenter" / "BraTS-PHANTOM-007" / "summary.json").read_text())
    assert set(seg["prediction"]["voxels_per_label"]) <= {"0", "1", "2", "4"}  # BraTS 2021 label values
    assert (out / "segmenter" / "BraTS-PHANTOM-007" / "prediction.nii.gz").exists()
    again = subprocess.run([sys.executable, "-m", "nxrt.cli", "demo", "-o", str(out)], capture_output=True,
                           text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    # a pip user has the demo's copies of the models: they explain its copy of the case, and the
    # grader's label names work as targets (-t HGG is -t 1)
    case = out / "input" / "BraTS-PHANTOM-007"
    grader = out / "models" / "grader.onnx"
    one = run_cli("explain", grader, case, "-m", "vanilla", "-t", "HGG", "-o", tmp_path / "a")
    two = run_cli("explain", grader, case, "-m", "vanilla", "-t", "1", "-o", tmp_path / "b")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    a = nib.load(str(tmp_path / "a" / "BraTS-PHANTOM-007" / "vanilla.nii.gz")).get_fdata()
    np.testing.assert_array_equal(a, nib.load(str(tmp_path / "b" / "BraTS-PHANTOM-007" / "vanilla.nii.gz")).get_fdata())
    assert np.abs(a).max() > 0
    assert "prediction: HGG" in one.stdout and "explained: HGG, score" in one.stdout, one.stdout
    seg = run_cli("explain", out / "models" / "segmenter.onnx", case, "-m", "gradcam", "-o", tmp_path / "s")
    assert seg.returncode == 0, seg.stderr
    assert "prediction: tumour voxels per label: necrosis (1)" in seg.stdout and "look first at" in seg.stdout
    gradcam = json.loads((tmp_path / "s" / "BraTS-PHANTOM-007" / "summary.json").read_text())["methods"]["gradcam"]
    assert gradcam["share_in_true_tumour"] > 5 * gradcam["true_tumour_share_of_brain"]


def test_wheel_ships_the_demo_and_stays_small(tmp_path):
    """The wheel carries both demo models, the case and the template, and stays under 20 MB."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", str(root),
                          "-w", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stdout + res.stderr, "the build warns (packaging configuration)"
    (wheel,) = tmp_path.glob("nxrt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "nxrt/demo/data/"
    assert {data + "grader.onnx", data + "segmenter.onnx", data + "icbm152_2009a_2mm.npz", data + "NOTICE"} <= names
    assert {f"{data}case/BraTS-PHANTOM-007_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg")} <= names
    size_mb = wheel.stat().st_size / 1e6
    print(f"wheel {wheel.name}: {size_mb:.1f} MB")
    assert size_mb < 20
