"""The HTML report's size and cost on a BraTS-size case, and the cohort index's size for 1000 cases.

A 240x240x155, 4-channel case at 1 mm is made from real anatomy: the ICBM 2009a template shipped
with the demo (2 mm, upsampled), four contrasts from its grey / white matter / CSF maps, a tumour
(bright core and oedema), and noise like a magnitude MRI's (Rician, sd 4% of white matter) so the
volumes compress as scans do, not as smooth phantoms. A DynUNet on the centre 128^3 crop explains it
with vanilla, Grad-CAM and IG-4 (three maps in the page); the script reports report.html's size and
the seconds writing it took (summary.json's timings.report_s) against the vanilla gradient's own
time, and the size of an index.html of 1000 such cases.

    .venv/bin/python benchmarks/bench_report.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradient import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = (240, 240, 155)


def brats_like_case(folder: Path, name: str) -> None:
    from scipy import ndimage

    atlas = np.load(ROOT / "nxrt" / "demo" / "data" / "icbm152_2009a_2mm.npz")
    maps = {}
    for key in ("t1", "gm", "wm"):
        up = ndimage.zoom(atlas[key].astype(np.float32) / 255.0, 2.0, order=1)  # 1 mm
        canvas = np.zeros(GRID, np.float32)
        lo = [(g - u) // 2 for g, u in zip(GRID, up.shape, strict=True)]
        src = tuple(slice(max(0, -a), max(0, -a) + min(g, u)) for a, g, u in zip(lo, GRID, up.shape, strict=True))
        dst = tuple(slice(max(0, a), max(0, a) + min(g, u)) for a, g, u in zip(lo, GRID, up.shape, strict=True))
        canvas[dst] = up[src]
        maps[key] = canvas
    brain = maps["t1"] > 0.08
    gm, wm = maps["gm"], maps["wm"]
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in GRID), indexing="ij")
    centre = np.array([150.0, 140.0, 85.0])
    r = np.sqrt(((i - centre[0]) / 22) ** 2 + ((j - centre[1]) / 18) ** 2 + ((k - centre[2]) / 16) ** 2)
    core, oedema = (r < 0.6) & brain, (r < 1.0) & brain
    contrasts = {"flair": (0.55, 0.45, 0.10, 1.0, 0.9), "t1": (0.45, 0.75, 0.20, 0.35, 0.4),
                 "t1ce": (0.45, 0.75, 0.20, 1.1, 0.45), "t2": (0.45, 0.35, 1.0, 0.8, 0.85)}
    rng = np.random.default_rng(0)
    for modality, (g, w, c, tumour_core, tumour_oedema) in contrasts.items():
        signal = 1000 * (g * gm + w * wm + c * csf)
        signal = np.where(oedema, 1000 * tumour_oedema, signal)
        signal = np.where(core, 1000 * tumour_core, signal)
        sd = 0.04 * 1000 * w
        noisy = np.hypot(signal + rng.normal(0, sd, GRID), rng.normal(0, sd, GRID))  # Rician magnitude
        vol = np.where(brain, noisy, 0).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([-1, -1, 1, 1.0])), str(folder / f"{name}_{modality}.nii.gz"))
    seg = np.where(core, 1, np.where(oedema, 2, 0)).astype(np.int16)
    nib.save(nib.Nifti1Image(seg, np.diag([-1, -1, 1, 1.0])), str(folder / f"{name}_seg.nii.gz"))


def main() -> None:
    from nxrt.cohort import CaseOutcome
    from nxrt.report import cohort_page

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "dynunet.onnx"
        export(model, 128)
        subprocess.run([sys.executable, "-m", "nxrt.cli", "card", str(model), "--set", "task=segmentation",
                        "--set", "channels=flair,t1,t1ce,t2", "--set", "normalize=zscore"], check=True,
                       capture_output=True)
        case = tmp / "BraTS2021_00000"
        case.mkdir()
        brats_like_case(case, case.name)
        out = tmp / "out"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nxrt.cli", "explain", str(model), str(case), "-m", "vanilla",
                        "-m", "gradcam", "-m", "ig", "--steps", "4", "-o", str(out)], check=True)
        wall = time.perf_counter() - t0
        folder = out / case.name
        summary = json.loads((folder / "summary.json").read_text())
        page_mb = (folder / "report.html").stat().st_size / 1e6
        thumb_kb = (folder / "thumbnail.png").stat().st_size / 1e3
        vanilla = summary["methods"]["vanilla"]
        vanilla_s = vanilla["seconds"] - vanilla["session_build_seconds"]
        report_s = summary["timings"]["report_s"]
        outcomes = [CaseOutcome(case.name, "ok", 1.0, summary) for _ in range(1000)]
        index_kb = len(cohort_page.render(out, outcomes).encode()) / 1e3
    lines = [
        "A BraTS-size case 240x240x155x4 at 1 mm (ICBM 2009a anatomy, a tumour, Rician noise at 4% of white "
        "matter; int16 gzip NIfTI) explained by a DynUNet on the centre 128^3 crop with vanilla, Grad-CAM and "
        f"IG-4 (three maps in the page), {os.cpu_count()} threads.",
        "",
        "| | value |",
        "|---|---|",
        f"| report.html (four scans, three maps, outlines; self-contained) | {page_mb:.1f} MB |",
        f"| writing it (summary.json timings.report_s: crop, quantise, gzip, base64, thumbnail) | {report_s:.2f} s |",
        f"| the vanilla gradient's own time (session build not counted) | {vanilla_s:.2f} s |",
        f"| report time / vanilla time | {report_s / vanilla_s:.1%} |",
        f"| thumbnail.png | {thumb_kb:.0f} kB |",
        f"| index.html for 1000 such cases (text only; thumbnails are the cases' files) | {index_kb:.0f} kB |",
        f"| whole `nxrt explain` command | {wall:.1f} s |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_report.py`.",
    ]
    table = "\n".join(lines)
    print(table)
    from bench_gradient import write_section_named

    write_section_named(table, "bench_report", "The HTML report: size and write time (issue 17)")


if __name__ == "__main__":
    main()
