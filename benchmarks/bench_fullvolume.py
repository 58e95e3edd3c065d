"""The paper's whole cropped volume: integrated gradients on a MONAI DynUNet at 1x4x192x224x160.

The DynUNet of bench_gradient.py (filters 16-32-64-128, instance norm) is exported at the full
BraTS crop, and nxrt explains one random input with integrated gradients (32 steps, Gauss-Legendre)
of the pooled segmentation score, with the AUTOMATIC batch size. The explanation runs in its own
process so that its peak RSS (getrusage of the child) is its own. Target (issue 6): completes within
16 GB peak RSS on this machine; the time is reported.

    .venv/bin/python benchmarks/bench_fullvolume.py              # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_fullvolume.py --steps 4    # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradient import build_dynunet, write_section_named  # noqa: E402

SHAPE = (192, 224, 160)


def export(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    torch.onnx.export(build_dynunet(), (torch.zeros(1, 4, *SHAPE),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)


def worker(model: Path, steps: int) -> dict:
    import numpy as np

    import nxrt
    from nxrt.engine import available_memory

    x = np.random.default_rng(0).standard_normal((1, 4, *SHAPE)).astype(np.float32)
    ex = nxrt.Explainer(model, task="segmentation", layout="channels_first")
    avail = available_memory()
    t0 = time.perf_counter()
    a = ex.explain(x, "integrated_gradients", target=1, steps=steps)
    seconds = time.perf_counter() - t0
    assert a.shape == x.shape and np.isfinite(a).all()
    return {"seconds": seconds, "batch_size": ex.context(x).batch_size, "available_gb": avail / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dynunet_full.onnx"
        export(model)
        env = dict(os.environ, NXRT_CACHE=str(Path(tmp) / "cache"))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--worker", str(model), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    table = "\n".join([
        f"MONAI DynUNet (16-32-64-128, instance norm) at 1x4x{'x'.join(map(str, SHAPE))}, integrated gradients "
        f"({args.steps} steps), pooled segmentation score, automatic batch size, {os.cpu_count()} threads.",
        "",
        "| what | value |",
        "|---|---|",
        f"| memory available when it started | {result['available_gb']:.1f} GB |",
        f"| automatic batch size | {result['batch_size']} |",
        f"| explanation time (session build included) | {result['seconds']:.0f} s |",
        f"| whole process (model load, augment, explanation) | {wall:.0f} s |",
        f"| **peak RSS of the process** | **{peak_gb:.1f} GB** (target <= 16 GB) |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_fullvolume.py`.",
    ])
    print(table)
    if not args.no_write:
        write_section_named(table, "bench_fullvolume", "The whole cropped volume, 1x4x192x224x160 (issue 6)")


if __name__ == "__main__":
    main()
