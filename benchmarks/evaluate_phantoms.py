"""The seven NeuroXAI methods, measured: every default metric plus MPRT and the estimated tumour,
for the shipped demo grader and segmenter on N fresh phantoms. MPRT randomises the grader layer by
layer (Quantus' default: its 5 weighted layers, the curves in metrics.png); the segmenter's 11
layers at once (skip_layers: the value is the same, one explanation instead of 11 per method).

Each model runs ONE `nxrt evaluate` over the phantom cohort (BraTS 2021 files, seeds 9100+, never
seen in training) with the seven methods of the paper. The cohort's metrics.md and metrics.png are
copied to docs/metrics_<model>.md / .png (the README embeds them) and the wall time is printed.

    .venv/bin/python benchmarks/evaluate_phantoms.py [--cases 6] [--models grader segmenter]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from nxrt.demo.phantom import make_phantom, write_brats_case

METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "guided_ig", "smoothgrad", "gradcam",
           "guided_gradcam")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--models", nargs="+", default=["grader", "segmenter"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = []
        for k in range(args.cases):
            # alternate grades: the grader's HGG cases carry the localisation numbers
            phantom = make_phantom(9100 + k, grade="HGG" if k % 2 == 0 else "LGG")
            cases.append(write_brats_case(phantom, root / "cases", f"PHANTOM-{9100 + k}"))
        for name in args.models:
            with resources.as_file(resources.files("nxrt.demo") / "data" / f"{name}.onnx") as model:
                out = root / name
                cmd = [sys.executable, "-m", "nxrt.cli", "evaluate", str(model), *map(str, cases),
                       *[a for m in METHODS for a in ("-m", m)], "--metric", "mprt", "-o", str(out)]
                cmd += [a for m in _default_metrics(name) for a in ("--metric", m)]
                if name == "segmenter":  # MPRT layer by layer would explain each case 11 times per method
                    cmd += ["-p", "mprt.skip_layers=true"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(out / "metrics.md", DOCS / f"metrics_{name}.md")
            shutil.copyfile(out / "metrics.png", DOCS / f"metrics_{name}.png")
            shares = [json.loads((out / c.name / "summary.json").read_text())["methods"]["gradcam"]
                      .get("true_tumour_share_of_brain") for c in cases]
            print(f"{name}: {args.cases} cases x {len(METHODS)} methods in {wall:.0f} s; tumour share of the brain "
                  f"{sum(s for s in shares if s) / max(1, sum(1 for s in shares if s)):.3%}")
            print((out / "metrics.md").read_text())


def _default_metrics(model_name: str) -> list[str]:
    from nxrt.evaluation.metric import default_metrics

    return default_metrics(have_mask=True, have_method=True)


if __name__ == "__main__":
    main()
