"""The README's report screenshots, made by the test suite's browser (tests/browser.py: headless
Chromium in its own network namespace): the demo segmenter evaluated on three variants of the demo
phantom (as shipped, mirrored left-right, and without its _seg so that nothing is outlined as true),
then the case page of the first and the cohort page, written to docs/.

    .venv/bin/python examples/report_screenshots.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def variants(root: Path) -> list[Path]:
    source = Path(str(resources.files("nxrt.demo") / "data" / "case"))
    folders = []
    for name, mirror, keep_seg in (("BraTS-PHANTOM-007", False, True), ("BraTS-PHANTOM-107", True, True),
                                   ("BraTS-PHANTOM-207", False, False)):
        folder = root / name
        folder.mkdir()
        for f in sorted(source.glob("*.nii.gz")):
            if "_seg" in f.name and not keep_seg:
                continue
            img = nib.load(str(f))
            data = np.asarray(img.dataobj)
            data = data[::-1] if mirror else data  # the same affine: the tumour moves to the other side
            target = folder / f.name.replace("PHANTOM-007", name[6:])
            nib.save(nib.Nifti1Image(data, img.affine, img.header), str(target))
        folders.append(folder)
    return folders


def main() -> None:
    from tests.browser import Browser

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = variants(tmp)
        model = tmp / "segmenter.onnx"
        shutil.copy(resources.files("nxrt.demo") / "data" / "segmenter.onnx", model)
        out = tmp / "out"
        subprocess.run([sys.executable, "-m", "nxrt.cli", "evaluate", str(model), *map(str, cases), "-m", "vanilla",
                        "-m", "gradcam", "-m", "ig", "--steps", "16", "--metric", "pointing_game",
                        "--metric", "relevance_mass", "-o", str(out)], check=False)
        with Browser(1300, 1000) as browser:
            page = browser.page((out / cases[0].name / "report.html").as_uri())
            page.wait_for("document.body.dataset.ready === 'true'")
            page.screenshot(ROOT / "docs" / "report_case.png")
            page = browser.page((out / "index.html").as_uri())
            page.wait_for("document.body.dataset.ready === 'true'")
            page.wait_for("Array.from(document.images).every(i => i.complete)")
            page.screenshot(ROOT / "docs" / "report_index.png")
            assert not page.errors() and not page.network_requests()
    print("wrote docs/report_case.png and docs/report_index.png")


if __name__ == "__main__":
    main()
