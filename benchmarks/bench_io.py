"""Where the time of `nxrt explain` goes on a BraTS-size case: I/O vs the explanation itself.

A 240x240x155, 4-channel BraTS-style case (2021 names) is explained with the vanilla gradient by a
MONAI DynUNet (16-32-64-128, instance norm) whose input is the centre 128^3 crop; the script reports
loading + preprocessing, the explanation, and writing every output (NIfTI maps, prediction,
overview.png, summary.json), from `summary.json`'s own timings and the wall clock. Shares are of
the gradient's run time alone (the one-off session build is listed apart).

    .venv/bin/python benchmarks/bench_io.py
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "dynunet.onnx"
        export(model, 128)
        subprocess.run([sys.executable, "-m", "nxrt.cli", "card", str(model), "--set", "task=segmentation",
                        "--set", "channels=flair,t1,t1ce,t2", "--set", "normalize=zscore"], check=True,
                       capture_output=True)
        case = tmp / "BraTS2021_00000"
        case.mkdir()
        # like BraTS files: int16 volumes, an ellipsoidal head of smooth intensities, zeros around it
        i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in (240, 240, 155)), indexing="ij")
        brain = (i / 0.7) ** 2 + (j / 0.8) ** 2 + (k / 0.85) ** 2 < 1
        rng = np.random.default_rng(0)
        for c, name in enumerate(("flair", "t1", "t1ce", "t2")):
            vol = (400 + 150 * np.sin(3 * i + c) * np.cos(2 * j) + 50 * k + rng.normal(0, 10, brain.shape))
            vol = np.where(brain, vol, 0).astype(np.int16)
            nib.save(nib.Nifti1Image(vol, np.diag([1, 1, 1, 1.0])), str(case / f"BraTS2021_00000_{name}.nii.gz"))
        out = tmp / "out"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nxrt.cli", "explain", str(model), str(case), "-m", "vanilla",
                        "-o", str(out)], check=True)
        wall = time.perf_counter() - t0
        summary = json.loads((out / "BraTS2021_00000" / "summary.json").read_text())
    t = summary["timings"]
    # the denominator is the gradient's own run time: the session build (augmenting the graph, or
    # reading it from the cache, and onnxruntime's initialisation) is reported apart, not counted
    build_s = summary["methods"]["vanilla"]["session_build_seconds"]
    explain_s = summary["methods"]["vanilla"]["seconds"] - build_s
    io_s = t["load_and_preprocess_s"] + summary["methods"]["vanilla"]["write_seconds"] + t["figure_s"] + \
        t.get("prediction_s", 0.0) + t["finish_writes_s"]
    lines = [
        "BraTS-size case 240x240x155x4 (int16 gzip NIfTI, 2021 names) -> DynUNet on the centre 128^3 crop, vanilla "
        f"gradient, {os.cpu_count()} threads.",
        "",
        "| stage | seconds | share of the explanation time |",
        "|---|---|---|",
        "| load (4 gzip NIfTI files inflated, stacked and summed for the z-score; read ahead while the model "
        f"loads) | {t['load_s']:.2f} | {t['load_s'] / explain_s:.1%} |",
        f"| preprocess (the crop in the model's layout, z-scored in place) | {t['preprocess_s']:.2f} | "
        f"{t['preprocess_s'] / explain_s:.1%} |",
        f"| vanilla gradient (the explanation: onnxruntime running the gradient graph) | {explain_s:.2f} | 100% |",
        f"| building the gradient graph and its onnxruntime session (not counted above) | {build_s:.2f} | "
        f"{build_s / explain_s:.1%} |",
        f"| separate forward pass for the prediction ({summary['forward_pass']}) | {t['forward_s']:.2f} | "
        f"{t['forward_s'] / explain_s:.1%} |",
        f"| prediction labels (argmax, inverse crop, write) | {t.get('prediction_s', 0.0):.2f} | "
        f"{t.get('prediction_s', 0.0) / explain_s:.1%} |",
        f"| inverse crop + display map (the writes go to a background thread) | "
        f"{summary['methods']['vanilla']['write_seconds']:.2f} | "
        f"{summary['methods']['vanilla']['write_seconds'] / explain_s:.1%} |",
        f"| overview.png (while the NIfTI files compress) | {t['figure_s']:.2f} | {t['figure_s'] / explain_s:.1%} |",
        f"| waiting for the remaining NIfTI writes | {t['finish_writes_s']:.2f} | "
        f"{t['finish_writes_s'] / explain_s:.1%} |",
        f"| **all I/O and pre/post-processing** | **{io_s:.2f}** | **{io_s / explain_s:.1%}** |",
        f"| whole `nxrt explain` command (incl. model load and session build) | {wall:.2f} | |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_io.py`.",
    ]
    table = "\n".join(lines)
    print(table)
    from bench_gradient import write_section_named

    write_section_named(table, "bench_io", "Case I/O vs explanation time (issue 4)")


if __name__ == "__main__":
    main()
