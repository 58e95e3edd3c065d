"""nxrt vs Captum, method by method, on the same model, input, machine and threads.

Two models: (a) the paper's classifier, a ResNet50 with a dense head on 1x3x224x224 (2 classes,
softmax output), and (b) a MONAI DynUNet (16-32-64-128, instance norm) on 1x4xS^3 with nxrt's
segmentation score (the spatial mean of one output channel). Each (tool, method) runs in its own
process (peak RSS is its own); rounds alternate between the tools; each process warms up with one
gradient before its timed run; the table reports medians over the rounds. Captum and nxrt get the
same internal batch size (IG steps / SmoothGrad samples / occlusion windows per call). The
`forward` row is the floor: torch's and onnxruntime's own forward pass of the model.

    .venv/bin/python benchmarks/bench_methods.py --model resnet50 --rounds 3
    .venv/bin/python benchmarks/bench_methods.py --model dynunet --size 96 --rounds 3
    .venv/bin/python benchmarks/bench_methods.py --model dynunet --size 128 --rounds 1 --methods vanilla,ig
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
from bench_gradient import TARGET, build_dynunet, peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"forward": "forward pass only (the floor)", "vanilla": "vanilla gradient", "gbp": "guided backprop",
          "gxi": "gradient x input", "ig": "integrated gradients", "sg": "SmoothGrad", "gradcam": "Grad-CAM",
          "ggcam": "guided Grad-CAM", "occlusion": "occlusion"}
NXRT_NAMES = {"gbp": "guided_backprop", "gxi": "gradient_x_input", "ig": "integrated_gradients",
              "sg": "smoothgrad", "ggcam": "guided_gradcam"}
ALL_METHODS = "forward,vanilla,gbp,gxi,ig,sg,gradcam,ggcam,occlusion"
CLASS = 1  # the ResNet50's explained class
TOOLS = ("captum", "nxrt", "openvino")
TOOL_LABELS = {"captum": "Captum / torch", "nxrt": "nxrt / onnxruntime", "openvino": "nxrt / OpenVINO"}


def build_resnet50():
    """ResNet50 (torchvision's layout, via MONAI: no weights downloaded) with a dense head and a
    softmax, like the paper's glioma grader."""
    import torch
    from monai.networks.nets import resnet50

    net = resnet50(spatial_dims=2, n_input_channels=3, num_classes=2)
    net.fc = torch.nn.Sequential(torch.nn.Linear(2048, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2),
                                 torch.nn.Softmax(dim=1))
    return net.eval()


def input_shape(args) -> tuple:
    return (1, 3, 224, 224) if args.net == "resnet50" else (1, 4, args.size, args.size, args.size)


def occlusion_window(args) -> tuple[int, int]:
    """(patch, stride) per spatial axis: 8x8 = 64 windows on either model."""
    return (28, 28) if args.net == "resnet50" else (args.size // 4, args.size // 4)


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


def export(path: Path, args) -> None:
    import torch

    torch.manual_seed(0)
    net = build_resnet50() if args.net == "resnet50" else build_dynunet()
    torch.onnx.export(net, (torch.zeros(*input_shape(args)),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)
    torch.save(net.state_dict(), path.with_suffix(".pt"))


def run_captum(method: str, x, model_path: Path, args) -> float:
    import captum.attr as ca
    import torch

    torch.set_num_threads(args.threads)
    if args.net == "resnet50":
        net = build_resnet50()
        net.load_state_dict(torch.load(model_path.with_suffix(".pt")))
        model, target, layer = net, CLASS, net.layer4[-1].conv3
    else:
        net = build_dynunet()
        net.load_state_dict(torch.load(model_path.with_suffix(".pt")))
        # the layer nxrt takes by default (the deepest Conv with more channels than the output)
        model, target, layer = pooled(net), TARGET, net.upsamples[-1].conv_block.conv2.conv
    xt = torch.tensor(x)
    ca.Saliency(model).attribute(xt, target=target, abs=False)  # warm-up
    patch, stride = occlusion_window(args)
    spatial = x.shape[2:]
    t0 = time.perf_counter()
    if method == "forward":
        with torch.no_grad():
            model(xt)
    elif method == "vanilla":
        ca.Saliency(model).attribute(xt, target=target, abs=False)
    elif method == "gbp":
        ca.GuidedBackprop(model).attribute(xt, target=target)
    elif method == "gxi":
        ca.InputXGradient(model).attribute(xt, target=target)
    elif method == "ig":
        ca.IntegratedGradients(model).attribute(xt, target=target, n_steps=args.steps,
                                                internal_batch_size=args.batch)
    elif method == "sg":
        ca.NoiseTunnel(ca.Saliency(model)).attribute(xt, nt_type="smoothgrad", nt_samples=args.samples,
                                                     nt_samples_batch_size=args.batch, stdevs=0.15 * float(
                                                         x.max() - x.min()), target=target, abs=False)
    elif method == "gradcam":
        cam = ca.LayerGradCam(model, layer).attribute(xt, target=target, relu_attributions=True)
        ca.LayerAttribution.interpolate(cam, spatial, interpolate_mode="trilinear" if len(spatial) == 3
                                        else "bilinear")
    elif method == "ggcam":
        ca.GuidedGradCam(model, layer).attribute(xt, target=target, interpolate_mode="trilinear"
                                                 if len(spatial) == 3 else "bilinear")
    elif method == "occlusion":
        ca.Occlusion(model).attribute(xt, target=target, sliding_window_shapes=(x.shape[1],) + (patch,) * len(spatial),
                                      strides=(x.shape[1],) + (stride,) * len(spatial), baselines=0.0,
                                      perturbations_per_eval=args.batch)
    return time.perf_counter() - t0


def run_nxrt(method: str, x, model_path: Path, args, provider: str = "cpu") -> float:
    import nxrt

    if method == "forward" and provider == "openvino":  # OpenVINO's own forward of the original model
        import openvino as ov

        from nxrt.backend_openvino import compile_config

        compiled = ov.Core().compile_model(str(model_path), "CPU", compile_config(args.threads))
        request = compiled.create_infer_request()
        request.infer({"input": x})
        t0 = time.perf_counter()
        request.infer({"input": x})
        return time.perf_counter() - t0
    if method == "forward":  # onnxruntime's own forward pass of the original model
        from nxrt.engine import make_session

        sess = make_session(str(model_path), "cpu", args.threads)
        sess.run(None, {"input": x})
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        return time.perf_counter() - t0
    task = "classification" if args.net == "resnet50" else "segmentation"
    target = CLASS if args.net == "resnet50" else TARGET
    ex = nxrt.Explainer(model_path, task=task, batch_size=args.batch, threads=args.threads, providers=provider)
    patch, stride = occlusion_window(args)
    params = {"ig": {"steps": args.steps}, "sg": {"samples": args.samples},
              "occlusion": {"patch": patch, "stride": stride}}.get(method, {})
    name = NXRT_NAMES.get(method, method)
    if method in ("gradcam", "ggcam", "gbp"):
        ex.explain(x, name, target=target, **params)  # warm-up: builds the sessions this method uses
    else:
        ex.explain(x, "vanilla", target=target)  # warm-up (builds the gradient session)
    t0 = time.perf_counter()
    ex.explain(x, name, target=target, **params)
    return time.perf_counter() - t0


def worker(args) -> dict:
    import numpy as np

    x = np.random.default_rng(0).standard_normal(input_shape(args)).astype(np.float32)
    if args.worker == "captum":
        seconds = run_captum(args.method, x, args.onnx, args)
    else:
        seconds = run_nxrt(args.method, x, args.onnx, args, "openvino" if args.worker == "openvino" else "cpu")
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", dest="net", choices=("resnet50", "dynunet"), default="dynunet")
    ap.add_argument("--methods", default=ALL_METHODS)
    ap.add_argument("--size", type=int, default=96, help="DynUNet input edge (the ResNet50 takes 224x224)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="internal batch size of both tools")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tools", default=",".join(TOOLS), help="captum, nxrt (onnxruntime), openvino (nxrt on it)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--update", action="store_true",
                    help="replace only the rows of the methods run in the existing BENCHMARKS.md table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = args.methods.split(",")
    tools = args.tools.split(",")
    results = {(m, t): [] for m in methods for t in tools}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"{args.net}.onnx"
        export(model, args)
        for r in range(args.rounds):
            for m in methods:
                for tool in tools:
                    cmd = [sys.executable, __file__, "--worker", tool, "--method", m, "--onnx", str(model)]
                    cmd += ["--model", args.net]
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
    if args.update:
        table = merge_rows(table, args)
    print(table)
    if not args.no_write:
        key = "resnet50" if args.net == "resnet50" else str(args.size)
        title = "ResNet50 + head, 1x3x224x224" if args.net == "resnet50" else f"DynUNet, 1x4x{args.size}^3"
        from bench_gradient import write_section_named

        write_section_named(table, f"bench_methods_{key}", f"nxrt vs Captum, per method ({title})")


def merge_rows(table: str, args) -> str:
    """The new table with the rows of methods not run now taken from the table in BENCHMARKS.md
    (rows are keyed by their label; the order is ALL_METHODS')."""
    key = "resnet50" if args.net == "resnet50" else str(args.size)
    text = (ROOT / "BENCHMARKS.md").read_text()
    start, end = f"<!-- bench_methods_{key}:start -->", f"<!-- bench_methods_{key}:end -->"
    if start not in text:
        return table
    old = text[text.index(start):text.index(end)]

    def rows(block: str) -> dict[str, str]:
        return {line.split("|")[1].strip(): line for line in block.splitlines()
                if line.startswith("| ") and not line.startswith("| method")}

    merged = {**rows(old), **rows(table)}
    ordered = [merged[LABELS[m]] for m in ALL_METHODS.split(",") if LABELS[m] in merged]
    lines = table.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    last = max(i for i, line in enumerate(lines) if line.startswith("| "))
    updated = [m for m in ALL_METHODS.split(",") if LABELS[m] in rows(table)]
    note = f"Rows {', '.join(LABELS[m] for m in updated)} re-measured later with `--update` " \
        "(same command, those methods)."
    keep = [line for line in old.splitlines() if line.startswith("nxrt's vanilla gradient costs")]
    tail = lines[last + 1:]
    if keep and not any(line.startswith("nxrt's vanilla gradient costs") for line in tail):
        tail = ["", *keep, *tail]
    return "\n".join(lines[:first + 1] + ordered + tail + ["", note])


def report(args, methods, results) -> str:
    import onnxruntime
    import torch

    tools = list(dict.fromkeys(t for _, t in results))
    med = {k: float(np.median([r["seconds"] for r in v])) for k, v in results.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    patch, stride = occlusion_window(args)
    what = ("ResNet50 (MONAI's torchvision layout) + dense head 2048-256-2 + softmax, 1x3x224x224, score = "
            f"probability of class {CLASS}" if args.net == "resnet50" else
            f"MONAI DynUNet (16-32-64-128, instance norm), 1x4x{args.size}^3, score = spatial mean of channel {TARGET}")
    lines = [
        f"{what}; {args.threads} threads each; internal batch size {args.batch} for both; IG {args.steps} steps "
        f"(Gauss-Legendre for nxrt, Captum's default), SmoothGrad {args.samples} samples, Grad-CAM at the same layer "
        "for both (nxrt's default: the deepest Conv with more channels than the output), "
        f"occlusion with {patch}-voxel patches at stride {stride}; median of {args.rounds} alternating "
        "round(s), each run in its own process after a warm-up. "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}" + (
            f", OpenVINO {_openvino_version()}." if "openvino" in tools else "."),
        "",
        "| method | " + " | ".join(f"{TOOL_LABELS[t]} (s)" for t in tools) + " | "
        + " | ".join(f"{TOOL_LABELS[t]} / Captum" for t in tools if t != "captum") + " | "
        + " | ".join(f"{TOOL_LABELS[t].split(' / ')[-1]} peak RSS (MB)" for t in tools) + " |",
        "|---|" + "---|" * (3 * len(tools) - 1),
    ]
    for m in methods:
        c = med[(m, "captum")]
        lines.append(f"| {LABELS[m]} | " + " | ".join(f"{med[(m, t)]:.2f}" for t in tools) + " | "
                     + " | ".join(f"**{med[(m, t)] / c:.2f}x**" for t in tools if t != "captum") + " | "
                     + " | ".join(f"{rss[(m, t)]:.0f}" for t in tools) + " |")
    if "forward" in methods and "vanilla" in methods:
        floors = [f"on {TOOL_LABELS[t].split(' / ')[-1]} **{med[('vanilla', t)] / med[('forward', t)]:.2f}x** "
                  f"its forward pass" for t in tools if t != "captum"]
        lines += ["", f"nxrt's vanilla gradient costs {', '.join(floors)} (torch: "
                      f"{med[('vanilla', 'captum')] / med[('forward', 'captum')]:.2f}x its forward)."]
    size = "" if args.net == "resnet50" else f" --size {args.size}"
    lines += ["", f"Reproduce: `.venv/bin/python benchmarks/bench_methods.py --model {args.net}{size} --methods "
                  f"{','.join(methods)} --rounds {args.rounds} --batch {args.batch} --tools {','.join(tools)}`."]
    return "\n".join(lines)


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


if __name__ == "__main__":
    main()
