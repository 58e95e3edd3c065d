"""Guided IG's path bookkeeping against its gradient calls, on a real volume (issue 13, item 11).

A MONAI DynUNet (benchmarks/bench_gradient.py) on a 1x4x128^3 input: guided IG with a few steps
through nxrt, each gradient call timed where it happens (the Context's own `gradient`, wrapped); the
rest of the method's time is the bookkeeping (corridor, quantile cut-offs, moves). Reported per
step and as a share of the gradient time. The method's steps are sequential, so the per-step
figures hold for any step count (200 by default).

    .venv/bin/python benchmarks/bench_guided_ig.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradient import export, write_section_named  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    import nxrt
    from nxrt.context import Context

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dynunet.onnx"
        export(model, args.size)
        ex = nxrt.Explainer(model, task="segmentation")
        x = np.random.default_rng(0).standard_normal((1, 4, *(args.size,) * 3)).astype(np.float32)
        ex.explain(x, "vanilla", target=[1, 2])  # builds the gradient session (not timed)
        spent = []
        plain = Context.gradient

        def timed(self, xs, target, guided=False):
            t0 = time.perf_counter()
            try:
                return plain(self, xs, target, guided)
            finally:
                spent.append(time.perf_counter() - t0)

        Context.gradient = timed
        try:
            t0 = time.perf_counter()
            ex.explain(x, "guided_ig", target=[1, 2], steps=args.steps)
            total = time.perf_counter() - t0
        finally:
            Context.gradient = plain
    gradient = sum(spent)
    book = total - gradient
    lines = [
        f"DynUNet (16-32-64-128, instance norm), input 1x4x{args.size}^3 ({4 * args.size ** 3 / 1e6:.1f} M features), "
        f"guided IG {args.steps} steps, {os.cpu_count()} threads.",
        "",
        "| | seconds per step | share of the gradient time |",
        "|---|---|---|",
        f"| gradient call | {gradient / args.steps:.2f} | 100% |",
        f"| path bookkeeping (corridor, cut-off, moves) | {book / args.steps:.2f} | {book / gradient:.1%} |",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/bench_guided_ig.py --steps {args.steps}`.",
    ]
    table = "\n".join(lines)
    print(table)
    write_section_named(table, "bench_guided_ig", "Guided IG bookkeeping vs gradient calls at 128^3 (issue 13)")


if __name__ == "__main__":
    main()
