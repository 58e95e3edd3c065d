"""Where a gradient's time goes, by operator: onnxruntime's own profiler on nxrt's augmented graph.

    .venv/bin/python benchmarks/profile_gradient.py --model resnet50
    .venv/bin/python benchmarks/profile_gradient.py --model dynunet --size 96 --batch 4

Prints the share of kernel time per op type, split into forward nodes and nxrt's gradient nodes
(names starting with nxrt_grad), over a few runs after a warm-up.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("resnet50", "dynunet"), default="resnet50")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    import onnxruntime as ort
    from bench_methods import export, input_shape

    import nxrt
    from nxrt.engine import session_options
    from nxrt.passes import SEED, ScoreSpec, grad_name

    args.net = args.model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.net}.onnx"
        export(path, args)
        ex = nxrt.Explainer(path, task="classification" if args.net == "resnet50" else "segmentation")
        shape = input_shape(args)
        aug = nxrt.augment(ex._fixed_model(shape[1:]),
                           score=ScoreSpec(task="classification" if args.net == "resnet50" else "segmentation"))
        so = session_options(os.cpu_count())
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((args.batch, *shape[1:])).astype(np.float32)
        k = sess.get_inputs()[1].shape[1] if len(sess.get_inputs()) > 1 else 2
        seed = np.zeros((args.batch, k if isinstance(k, int) else 2), np.float32)
        seed[:, 1] = 1
        feeds = {"input": x, SEED: seed}
        for _ in range(args.runs + 1):
            sess.run([grad_name("input")], feeds)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    per = collections.Counter()
    for ev in trace:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        part = "gradient" if node.startswith("nxrt_grad") else "forward"
        per[(part, ev["args"].get("op_name", "?"))] += ev["dur"]
    total = sum(per.values())
    per_run = total / 1e6 / (args.runs + 1)
    print(f"{args.net} batch {args.batch}: kernel time per op type (shares of {per_run:.3f} s per run)")
    for (part, op), us in per.most_common(args.top):
        print(f"  {part:9s} {op:24s} {us / total:6.1%}")


if __name__ == "__main__":
    main()
