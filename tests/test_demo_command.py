"""`nxrt demo`: runs offline on the shipped grader and a phantom case, writes every output."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image as mpimg


def test_nxrt_demo_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "nxrt.cli", "demo", "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "look first at" in res.stdout and "overview.png" in res.stdout
    case = out / "BraTS-PHANTOM-007"
    summary = json.loads((case / "summary.json").read_text())
    assert summary["prediction"]["label"] == "HGG"
    methods = {"vanilla", "guided_backprop", "integrated_gradients", "guided_ig", "smoothgrad", "gradcam",
               "guided_gradcam"}
    assert set(summary["methods"]) == methods
    for m in methods:
        assert (case / f"{m}.nii.gz").exists() and (case / f"{m}_map.nii.gz").exists()
    # Grad-CAM looks at the tumour: far more of its mass inside it than the tumour's share of the brain
    assert summary["methods"]["gradcam"]["share_in_true_tumour"] > 5 * summary["methods"]["gradcam"][
        "true_tumour_share_of_brain"]
    img = mpimg.imread(str(case / "overview.png"))
    assert img.shape[0] > 1000 and img.shape[1] > 600 and img[..., :3].std() > 0.05  # 7 rows x 3 views
    again = subprocess.run([sys.executable, "-m", "nxrt.cli", "demo", "-o", str(out)], capture_output=True,
                           text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
