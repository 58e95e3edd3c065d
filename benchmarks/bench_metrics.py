"""Metric speed (issue 18).

(a) 3D: deletion + insertion with 20 steps each (42 scored inputs, the unperturbed one included)
    on a MONAI DynUNet (16-32-64-128, instance norm) at 1x4x128^3, against the floor: the same
    number of forward passes run one at a time through plain onnxruntime (the exported model, no
    nxrt). Target: <= 1.2x. The insertion's blurred baseline is included in nxrt's time.
(b) 2D: Quantus 0.6 metrics at their defaults vs nxrt's same computation (parity-tested in
    tests/test_metrics_*.py) on the same one-channel CNN and 64x64 image: PixelFlipping
    (features_in_step=1: 4096 scored inputs) = nxrt's deletion with one-voxel patches;
    RegionPerturbation (8x8 patches: 64 steps); FaithfulnessCorrelation (100 random subsets of 224
    features); MaxSensitivity (200 noisy copies explained again by the plain gradient: Quantus'
    "Gradient" = Captum Saliency(abs=False) = nxrt's vanilla). Target: nxrt >= 10x faster.

Each tool in its own process, 2 threads, medians of --rounds alternating runs; in (b) each process
times the metric warm (the median of 3 calls after an untimed one, for both tools).

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
    tool, metric = kind.split(":")
    net, x = small_model(), np.random.default_rng(2).standard_normal((1, 1, 64, 64)).astype(np.float32)
    a = np.random.default_rng(3).standard_normal((1, 1, 64, 64)).astype(np.float32)
    quantus_name, quantus_call, nxrt_name, nxrt_params = METRICS_2D[metric]
    if tool == "quantus2d":
        import quantus

        call = dict(quantus_call)
        if "explain_func" in call:
            call["explain_func"] = quantus.explain
        scorer = getattr(quantus, quantus_name)(disable_warnings=True)
        return {"seconds": warm_median(lambda: scorer(model=net, x_batch=x, y_batch=np.array([1]), a_batch=a,
                                                       device="cpu", **call))}
    import nxrt
    from nxrt.evaluation import evaluate

    ex = nxrt.Explainer(model, task="classification", layout="channels_first", threads=THREADS)
    calls = iter(range(100))  # a new seed each call: faithfulness correlation's subsets, never remembered scores
    return {"seconds": warm_median(lambda: evaluate(ex, x, a, target=1, metrics=[nxrt_name], method="vanilla",
                                                    seed=next(calls), **{nxrt_name: nxrt_params}))}


def warm_median(call, repeats: int = 3) -> float:
    """Seconds of `call`, the median of `repeats` after one untimed call (both tools measured warm:
    their first call also pays one-off allocations of the model runtime)."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# metric: (Quantus class (at its defaults), its call's extra arguments, nxrt metric, parameters that make
# it the same computation). Pixel flipping at Quantus' default = 4096 steps of one feature each.
METRICS_2D = {
    "pixel_flipping": ("PixelFlipping", {"softmax": True}, "deletion",
                       {"patch_size": 1, "steps": 4096, "perturb_baseline": "black"}),
    "region_perturbation": ("RegionPerturbation", {"softmax": True}, "region_perturbation", {}),
    "faithfulness_correlation": ("FaithfulnessCorrelation", {}, "faithfulness_correlation", {}),
    "max_sensitivity": ("MaxSensitivity", {"explain_func": "quantus.explain",
                                           "explain_func_kwargs": {"method": "Gradient"}}, "max_sensitivity", {}),
}


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
    ap.add_argument("--only-2d", action="store_true", help="skip (a)")
    ap.add_argument("--worker", nargs=3)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        m3 = Path(tmp) / "dynunet.onnx"
        if not args.only_2d:
            export(m3, args.size)
        m2 = Path(tmp) / "cnn.onnx"
        torch.onnx.export(small_model(), (torch.zeros(1, 1, 64, 64),), str(m2), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=17, dynamic_axes={"input": {0: "N"}})
        times: dict[str, list[float]] = {}
        kinds = [] if args.only_2d else [("ort3d", m3), ("nxrt3d", m3)]
        kinds += [(f"{tool}:{metric}", m2) for metric in METRICS_2D for tool in ("quantus2d", "nxrt2d")]
        for _ in range(args.rounds):
            for kind, model in kinds:
                out = subprocess.run([sys.executable, __file__, "--worker", kind, str(model), str(args.size)],
                                     capture_output=True, text=True, check=True)
                times.setdefault(kind, []).append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    if not args.only_2d:
        print(f"(a) 1x4x{args.size}^3 DynUNet: deletion+insertion (20 steps each) {med['nxrt3d']:.2f} s; 42 plain "
              f"onnxruntime forwards {med['ort3d']:.2f} s: {med['nxrt3d'] / med['ort3d']:.2f}x (target <= 1.2x)")
    for metric in METRICS_2D:
        q, n = med[f"quantus2d:{metric}"], med[f"nxrt2d:{metric}"]
        print(f"(b) 1x1x64^2 CNN, {metric} at Quantus' defaults: Quantus {q:.3f} s, nxrt {n:.3f} s: "
              f"nxrt {q / n:.1f}x faster (target >= 10x)")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
