"""The HTML report's size and cost on a BraTS-size case, and the cohort index's size for 1000 cases.

A 240x240x155, 4-channel case at 1 mm is made from real anatomy: the ICBM 2009a template shipped
with the demo (2 mm, upsampled), four contrasts from its grey / white matter / CSF maps, a tumour
(bright core and oedema), and noise like a magnitude MRI's (Rician, sd 4% of white matter) so the
volumes compress as scans do, not as smooth phantoms. It is explained with vanilla, Grad-CAM and IG-4
(three maps in the page) by an untrained DynUNet on the centre 128^3 crop (noisy maps: the
pessimistic case for the page's size) and by the trained demo segmenter (the case resampled to its
2 mm grid), and with vanilla by the DynUNet on the whole 192x224x160 crop; the script reports
report.html's size and the seconds writing it took (summary.json's timings.report_s) against the
vanilla gradient's own time, and the size of an index.html of 1000 such cases.

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
from bench_gradient import build_dynunet, export  # noqa: E402

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


def export_crop(path: Path, shape: tuple[int, int, int]) -> None:
    """The DynUNet of bench_gradient with a non-cubic input (BraTS's 192x224x160 crop)."""
    import torch

    torch.manual_seed(0)
    torch.onnx.export(build_dynunet(), (torch.zeros(1, 4, *shape),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)


def explain(model: Path, case: Path, out: Path, methods: tuple[str, ...], *extra: str) -> tuple[dict, float, Path]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nxrt.cli", "explain", str(model), str(case), *methods, "-o", str(out),
                    "--overwrite", *extra], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    folder = out / case.name
    return json.loads((folder / "summary.json").read_text()), wall, folder


def main() -> None:
    from importlib import resources

    from nxrt.cohort import CaseOutcome
    from nxrt.report import cohort_page

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dynunet, whole = tmp / "dynunet.onnx", tmp / "dynunet_crop.onnx"
        export(dynunet, 128)
        export_crop(whole, (192, 224, 160))
        for model in (dynunet, whole):
            subprocess.run([sys.executable, "-m", "nxrt.cli", "card", str(model), "--set", "task=segmentation",
                            "--set", "channels=flair,t1,t1ce,t2", "--set", "normalize=zscore"], check=True,
                           capture_output=True)
        case = tmp / "BraTS2021_00000"
        case.mkdir()
        brats_like_case(case, case.name)
        segmenter = Path(str(resources.files("nxrt.demo") / "data" / "segmenter.onnx"))
        three = ("-m", "vanilla", "-m", "gradcam", "-m", "ig", "--steps", "4")
        for label, model, methods, extra in (
                ("DynUNet (untrained) on the centre 128^3 crop; vanilla, Grad-CAM, IG-4", dynunet, three, ()),
                ("the demo segmenter (trained), the case resampled to its 2 mm grid; vanilla, Grad-CAM, IG-4",
                 segmenter, three, ("--resample",)),
                ("DynUNet (untrained) on the whole 192x224x160 crop; vanilla", whole, ("-m", "vanilla"), ())):
            summary, _, folder = explain(model, case, tmp / "out", methods, *extra)
            vanilla = summary["methods"]["vanilla"]
            vanilla_s = vanilla["seconds"] - vanilla["session_build_seconds"]
            rows.append((label, (folder / "report.html").stat().st_size / 1e6, summary["timings"]["report_s"],
                         vanilla_s, (folder / "thumbnail.png").stat().st_size / 1e3,
                         summary["provenance"]["provider"]))
        outcomes = [CaseOutcome(case.name, "ok", 1.0, summary) for _ in range(1000)]
        index_kb = len(cohort_page.render(tmp / "out", outcomes).encode()) / 1e3
    lines = [
        "A BraTS-size case 240x240x155x4 at 1 mm (ICBM 2009a anatomy, a tumour, Rician noise at 4% of white "
        f"matter; int16 gzip NIfTI), {os.cpu_count()} threads. Writing time: summary.json's timings.report_s "
        "(crop, quantise, compress, encode, thumbnail: the time the case waits for its page). The untrained "
        "DynUNet's maps and prediction are noise (the pessimistic case for the page's size); the trained "
        "segmenter's are what a real model gives.",
        "",
        "| model, methods | report.html | writing it | vanilla gradient (own time) | writing / vanilla | thumbnail "
        "| provider |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, mb, write_s, vanilla_s, thumb_kb, provider in rows:
        lines.append(f"| {label} | {mb:.1f} MB | {write_s:.2f} s | {vanilla_s:.2f} s | {write_s / vanilla_s:.1%} | "
                     f"{thumb_kb:.0f} kB | {provider} |")
    lines += [
        "",
        f"index.html for 1000 such cases (text only; the thumbnails are the cases' own files): {index_kb:.0f} kB.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_report.py`.",
    ]
    table = "\n".join(lines)
    print(table)
    from bench_gradient import write_section_named

    write_section_named(table, "bench_report", "The HTML report: size and write time (issue 17)")


if __name__ == "__main__":
    main()
