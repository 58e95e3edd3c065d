"""One input gradient of a MONAI DynUNet: nxrt vs torch autograd vs onnxruntime's forward (the floor).

Each tool runs in its own process (so peak RSS is its own), rounds alternate between the tools,
every process warms up once before its timed run, and the table reports medians over the rounds.
Both tools get the same number of threads (all cores unless --threads).

    .venv/bin/python benchmarks/bench_gradient.py            # 1x4x96^3, 3 rounds, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_gradient.py --size 64 --rounds 5 --no-write
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

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1  # the output channel whose spatial mean is the score


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from the parent across fork + exec, so a worker would report at least the parent's
    size at spawn time (the parent imports torch and exports the model: ~1.2 GB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build_dynunet():
    from monai.networks.nets import DynUNet

    return DynUNet(3, 4, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                   filters=[16, 32, 64, 128], norm_name="instance").eval()


def export(path: Path, size: int) -> None:
    import torch

    torch.manual_seed(0)
    torch.onnx.export(build_dynunet(), (torch.zeros(1, 4, size, size, size),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17)
    torch.save(build_dynunet().state_dict(), path.with_suffix(".pt"))


def worker(tool: str, model: Path, size: int, threads: int) -> dict:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 4, size, size, size)).astype(np.float32)
    if tool == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = build_dynunet()
        net.load_state_dict(torch.load(model.with_suffix(".pt")))

        def step():
            xt = torch.tensor(x, requires_grad=True)
            net(xt)[:, TARGET].mean().backward()
            return xt.grad
    else:
        import nxrt
        from nxrt.engine import make_session
        from nxrt.passes import ScoreSpec

        if tool == "nxrt":
            sess = make_session(nxrt.augment(model, score=ScoreSpec(task="segmentation")), "cpu", threads=threads)
            seed = np.zeros((1, 3), np.float32)
            seed[0, TARGET] = 1.0

            def step():
                return sess.run(["nxrt_grad__input"], {"input": x, "nxrt_seed": seed})[0]
        else:  # onnxruntime forward of the original model: the floor
            sess = make_session(str(model), "cpu", threads=threads)

            def step():
                return sess.run(None, {"input": x})[0]
    step()  # warm-up
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    return {"tool": tool, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.size, args.threads)))
        return
    tools = ["torch", "nxrt", "ort_forward"]
    results: dict[str, list[dict]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dynunet.onnx"
        export(model, args.size)
        for r in range(args.rounds):
            for tool in tools:
                out = subprocess.run([sys.executable, __file__, "--worker", tool, "--model", str(model),
                                      "--size", str(args.size), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[tool].append(res)
                print(f"round {r + 1}: {tool:12s} {res['seconds']:.3f} s  peak RSS {res['peak_rss_mb']:.0f} MB",
                      flush=True)
    med = {t: float(np.median([x["seconds"] for x in v])) for t, v in results.items()}
    rss = {t: max(x["peak_rss_mb"] for x in v) for t, v in results.items()}
    table = report(args, med, rss)
    print(table)
    if not args.no_write:
        write_section(table)


def report(args, med, rss) -> str:
    import platform

    import onnxruntime
    import torch

    lines = [
        f"DynUNet (MONAI, filters 16-32-64-128, instance norm), input 1x4x{args.size}^3, score = spatial mean of "
        f"output channel {TARGET}; {args.threads} threads each; median of {args.rounds} alternating rounds, each "
        f"tool in its own process after one warm-up. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}.",
        "",
        "| what | median time (s) | peak RSS (MB) | ratio |",
        "|---|---|---|---|",
        f"| torch autograd forward+backward | {med['torch']:.3f} | {rss['torch']:.0f} | 1.00 |",
        f"| nxrt gradient (augmented ONNX on onnxruntime) | {med['nxrt']:.3f} | {rss['nxrt']:.0f} | "
        f"**{med['nxrt'] / med['torch']:.2f}x torch** |",
        f"| onnxruntime forward only (the floor) | {med['ort_forward']:.3f} | {rss['ort_forward']:.0f} | "
        f"nxrt = {med['nxrt'] / med['ort_forward']:.2f}x forward |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_gradient.py` (writes this section).",
    ]
    return "\n".join(lines)


def write_section(table: str) -> None:
    write_section_named(table, "bench_gradient", "One gradient vs torch autograd (issue 2)")


def write_section_named(table: str, key: str, title: str) -> None:
    """Replace (or append) the marked section `key` of BENCHMARKS.md, atomically."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n## {title}\n\n{table}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
