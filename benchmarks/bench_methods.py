"""nxrt vs Captum, method by method, on the same model, input, machine and threads.

Each (tool, method) runs in its own process (peak RSS is its own); rounds alternate between the
tools; each process warms up with one gradient before its timed run; the table reports medians
over the rounds. Captum and nxrt get the same internal batch size (IG steps / SmoothGrad samples
per call).

    .venv/bin/python benchmarks/bench_methods.py --methods ig --size 96 --rounds 3
    .venv/bin/python benchmarks/bench_methods.py --methods vanilla,ig,sg,gradcam --size 64 --no-write
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradient import TARGET, build_dynunet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"vanilla": "vanilla gradient", "gbp": "guided backprop", "ig": "integrated gradients",
          "sg": "SmoothGrad", "gradcam": "Grad-CAM"}


def pooled(net):
    """Captum explains the score nxrt's segmentation head defines: the spatial mean of each channel."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.net = inner

        def forward(self, x):
            y = self.net(x)
            return y.mean(dim=tuple(range(2, y.dim())))

    return Pooled(net).eval()


def export(path: Path, size: int) -> None:
    import torch

    torch.manual_seed(0)
    net = build_dynunet()
    torch.onnx.export(net, (torch.zeros(1, 4, size, size, size),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)
    torch.save(net.state_dict(), path.with_suffix(".pt"))


def run_captum(method: str, x, model_path: Path, args) -> tuple[float, object]:
    import captum.attr as ca
    import torch

    torch.set_num_threads(args.threads)
    net = build_dynunet()
    net.load_state_dict(torch.load(model_path.with_suffix(".pt")))
    model = pooled(net)
    xt = torch.tensor(x)
    ca.Saliency(model).attribute(xt, target=TARGET, abs=False)  # warm-up
    t0 = time.perf_counter()
    if method == "vanilla":
        ca.Saliency(model).attribute(xt, target=TARGET, abs=False)
    elif method == "gbp":
        ca.GuidedBackprop(model).attribute(xt, target=TARGET)
    elif method == "ig":
        ca.IntegratedGradients(model).attribute(xt, target=TARGET, n_steps=args.steps,
                                                internal_batch_size=args.batch)
    elif method == "sg":
        ca.NoiseTunnel(ca.Saliency(model)).attribute(xt, nt_type="smoothgrad", nt_samples=args.samples,
                                                     nt_samples_batch_size=args.batch, stdevs=0.15 * float(
                                                         x.max() - x.min()), target=TARGET, abs=False)
    elif method == "gradcam":
        layer = net.output_block.conv.conv
        cam = ca.LayerGradCam(model, layer).attribute(xt, target=TARGET, relu_attributions=True)
        ca.LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="trilinear")
    return time.perf_counter() - t0


def run_nxrt(method: str, x, model_path: Path, args) -> float:
    import nxrt

    ex = nxrt.Explainer(model_path, task="segmentation", batch_size=args.batch, threads=args.threads)
    ex.explain(x, "vanilla", target=TARGET)  # warm-up (builds the session)
    params = {"ig": {"steps": args.steps}, "sg": {"samples": args.samples}}.get(method, {})
    name = {"gbp": "guided_backprop"}.get(method, method)
    if method == "gradcam":
        ex.explain(x, "gradcam", target=TARGET)  # the layer session is built here, untimed like the warm-up
    t0 = time.perf_counter()
    ex.explain(x, name, target=TARGET, **params)
    return time.perf_counter() - t0


def worker(args) -> dict:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 4, args.size, args.size, args.size)).astype(np.float32)
    fn = run_captum if args.worker == "captum" else run_nxrt
    seconds = fn(args.method, x, args.model, args)
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="vanilla,ig,sg,gradcam")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="internal batch size of both tools")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = args.methods.split(",")
    results = {(m, t): [] for m in methods for t in ("captum", "nxrt")}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dynunet.onnx"
        export(model, args.size)
        for r in range(args.rounds):
            for m in methods:
                for tool in ("captum", "nxrt"):
                    cmd = [sys.executable, __file__, "--worker", tool, "--method", m, "--model", str(model)]
                    for k in ("size", "steps", "samples", "batch", "threads"):
                        cmd += [f"--{k}", str(getattr(args, k))]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"{tool} {m} failed:\n{out.stderr[-3000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    results[(m, tool)].append(res)
                    print(f"round {r + 1}: {m:8s} {tool:7s} {res['seconds']:8.2f} s  peak RSS "
                          f"{res['peak_rss_mb']:6.0f} MB", flush=True)
    table = report(args, methods, results)
    print(table)
    if not args.no_write:
        write_section(table, f"bench_methods_{args.size}")


def report(args, methods, results) -> str:
    import onnxruntime
    import torch

    med = {k: float(np.median([r["seconds"] for r in v])) for k, v in results.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    lines = [
        f"MONAI DynUNet (16-32-64-128, instance norm), 1x4x{args.size}^3, score = spatial mean of channel {TARGET}; "
        f"{args.threads} threads each; internal batch size {args.batch} for both; IG {args.steps} steps "
        f"(Gauss-Legendre), SmoothGrad {args.samples} samples; median of {args.rounds} alternating rounds, each "
        f"run in its own process after a warm-up. torch {torch.__version__}, onnxruntime {onnxruntime.__version__}.",
        "",
        "| method | Captum (s) | nxrt (s) | nxrt / Captum | Captum peak RSS (MB) | nxrt peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        c, n = med[(m, "captum")], med[(m, "nxrt")]
        lines.append(f"| {LABELS[m]} | {c:.2f} | {n:.2f} | **{n / c:.2f}x** | {rss[(m, 'captum')]:.0f} | "
                     f"{rss[(m, 'nxrt')]:.0f} |")
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_methods.py --methods {','.join(methods)} "
                  f"--size {args.size} --rounds {args.rounds} --batch {args.batch}`."]
    return "\n".join(lines)


def write_section(table: str, key: str) -> None:
    from bench_gradient import write_section_named

    write_section_named(table, key, f"nxrt vs Captum, per method ({key.split('_')[-1]}^3)")


if __name__ == "__main__":
    main()
