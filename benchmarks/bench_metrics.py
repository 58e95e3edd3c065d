"""Metric speed (issue 18).

(a) 3D: deletion + insertion with 20 steps each (42 scored inputs, the unperturbed one included)
    on a MONAI DynUNet (16-32-64-128, instance norm) at 1x4x128^3, against the floor: the same
    number of forward passes run one at a time through plain onnxruntime (the exported model, no
    nxrt). Target: <= 1.2x. The insertion's blurred baseline is included in nxrt's time.
(b) 2D: Quantus 0.6 PixelFlipping at its default (features_in_step=1) vs nxrt's deletion with
    one-voxel patches (the same computation, parity-tested in tests/test_metrics_faithfulness.py) on
    the same one-channel CNN and 64x64 image: 4096 features, one per step = 4096 scored inputs.
    Target: nxrt >= 10x faster.

Each tool in its own process, 2 threads, medians of --rounds alternating runs.

    .venv/bin/python benchmarks/bench_metrics.py [--rounds 3] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradient import export  # noqa: E402

THREADS = 2


def worker(kind: str, model: str, size: int) -> dict:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    if kind in ("nxrt3d", "ort3d"):
        x = np.random.default_rng(0).standard_normal((1, 4, size, size, size)).astype(np.float32)
        if kind == "ort3d":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            sess.run(None, {"input": x})
            t0 = time.perf_counter()
            for _ in range(42):
                sess.run(None, {"input": x})
            return {"seconds": time.perf_counter() - t0}
        import nxrt
        from nxrt.evaluation import evaluate

        ex = nxrt.Explainer(model, task="segmentation", layout="channels_first", threads=THREADS)
        a = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        ex.scores(x)  # sessions built before the clock starts (as the floor's)
        t0 = time.perf_counter()
        evaluate(ex, x, a, target=1, metrics=["deletion", "insertion"])
        return {"seconds": time.perf_counter() - t0}
    import torch

    torch.set_num_threads(THREADS)
    net, x = small_model(), np.random.default_rng(2).standard_normal((1, 1, 64, 64)).astype(np.float32)
    a = np.random.default_rng(3).standard_normal((1, 1, 64, 64)).astype(np.float32)
    if kind == "quantus2d":
        import quantus

        metric = quantus.PixelFlipping(features_in_step=1, disable_warnings=True)
        t0 = time.perf_counter()
        metric(model=net, x_batch=x, y_batch=np.array([1]), a_batch=a, device="cpu", softmax=True)
        return {"seconds": time.perf_counter() - t0}
    import nxrt
    from nxrt.evaluation import evaluate

    ex = nxrt.Explainer(model, task="classification", layout="channels_first", threads=THREADS)
    ex.scores(x)
    t0 = time.perf_counter()
    evaluate(ex, x, a, target=1, metrics=["deletion"],
             deletion={"patch_size": 1, "steps": 4096, "perturb_baseline": "black"})
    return {"seconds": time.perf_counter() - t0}


def small_model():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2), nn.Softmax(dim=1)).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--worker", nargs=3)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        m3 = Path(tmp) / "dynunet.onnx"
        export(m3, args.size)
        m2 = Path(tmp) / "cnn.onnx"
        torch.onnx.export(small_model(), (torch.zeros(1, 1, 64, 64),), str(m2), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=17, dynamic_axes={"input": {0: "N"}})
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for kind, model in (("ort3d", m3), ("nxrt3d", m3), ("quantus2d", m2), ("nxrt2d", m2)):
                out = subprocess.run([sys.executable, __file__, "--worker", kind, str(model), str(args.size)],
                                     capture_output=True, text=True, check=True)
                times.setdefault(kind, []).append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"(a) 1x4x{args.size}^3 DynUNet: deletion+insertion (20 steps each) {med['nxrt3d']:.2f} s; 42 plain "
          f"onnxruntime forwards {med['ort3d']:.2f} s: {med['nxrt3d'] / med['ort3d']:.2f}x (target <= 1.2x)")
    print(f"(b) 1x1x64^2 CNN, pixel flipping 4096 steps: Quantus {med['quantus2d']:.3f} s, nxrt {med['nxrt2d']:.3f} s: "
          f"nxrt {med['quantus2d'] / med['nxrt2d']:.1f}x faster (target >= 10x)")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
