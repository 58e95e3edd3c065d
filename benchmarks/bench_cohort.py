"""A cohort through one `nxrt explain` call: total wall time vs the sum of the per-case explanation times.

20 demo-size phantom cases (BraTS 2021 files, seeds 300-319) are explained by the shipped demo
grader with three methods (vanilla, Grad-CAM, integrated gradients with 32 steps) in ONE command.
The ratio wall / sum(method seconds from each summary.json) says what the cohort machinery costs on
top of the explanations themselves: process start, model load and session builds (once), case
loading, preprocessing and every output written. Target (issue 6): <= 1.1.

    .venv/bin/python benchmarks/bench_cohort.py [--cases 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from nxrt.demo.phantom import make_phantom, write_brats_case

METHODS = ("vanilla", "gradcam", "integrated_gradients")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            resources.as_file(resources.files("nxrt.demo") / "data" / "grader.onnx") as model:
        tmp = Path(tmp)
        cases = [write_brats_case(make_phantom(300 + i), tmp / "cases", f"BraTS-COHORT-{i:03d}")
                 for i in range(args.cases)]
        out = tmp / "out"
        cmd = [sys.executable, "-m", "nxrt.cli", "explain", str(model), *map(str, cases), "-o", str(out),
               "--steps", "32"]
        for m in METHODS:
            cmd += ["-m", m]
        env = dict(os.environ, NXRT_CACHE=str(tmp / "cache"))
        runs = {}
        # first with a cold model cache (the augmented graph is built), then again with it warm
        for label in ("cold cache", "warm cache"):
            out = tmp / label.replace(" ", "_")
            cmd = [sys.executable, "-m", "nxrt.cli", "explain", str(model), *map(str, cases), "-o", str(out),
                   "--steps", "32"]
            for m in METHODS:
                cmd += ["-m", m]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            summaries = [json.loads((out / c.name / "summary.json").read_text()) for c in cases]
            runs[label] = (wall, summaries)
    lines = [
        f"{args.cases} phantom cases (demo size, BraTS 2021 files) x {len(METHODS)} methods ({', '.join(METHODS)}; "
        f"IG 32 steps), demo grader, one `nxrt explain` call, {os.cpu_count()} threads; the same command twice: "
        "first with an empty model cache, then with the augmented model cached.",
        "",
        "| what (seconds) | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    rows = {"sum of the per-case explanation times": [], "sum of the per-case forward passes": [],
            "sum of per-case load/preprocess, post-processing, figure and writes (figure and writes overlap "
            "the next case)": [], "whole command (process start, model load, session builds, everything)": [],
            "**ratio whole command / explanation times**": []}
    for wall, summaries in runs.values():
        explain = sum(m["seconds"] for s in summaries for m in s["methods"].values())
        io = sum(s["timings"]["load_and_preprocess_s"] + s["timings"].get("figure_s", 0.0) +
                 s["timings"].get("finish_writes_s", 0.0) +
                 sum(m.get("write_seconds", 0.0) for m in s["methods"].values()) for s in summaries)
        forward = sum(s["timings"]["forward_s"] for s in summaries)
        for key, value in zip(rows, (explain, forward, io, wall, wall / explain), strict=True):
            rows[key].append(f"**{value:.2f}**" if key.startswith("**") else f"{value:.1f}")
    lines += [f"| {key} | " + " | ".join(values) + " |" for key, values in rows.items()]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/bench_cohort.py`."]
    table = "\n".join(lines)
    print(table)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gradient import write_section_named

    write_section_named(table, "bench_cohort", "A cohort in one command (issue 6)")


if __name__ == "__main__":
    main()
