"""A cohort on Ray vs the local runner (issue 16), on this machine.

Demo-size phantom cases (BraTS 2021 files, seeds 300+) x three methods (vanilla, Grad-CAM,
integrated gradients with 32 steps), the shipped demo grader, each configuration in its own
process through `nxrt.cohort.run` (what `nxrt explain` runs), the model cache warm:

- local, 2 threads (the default on this 2-core machine) and local, 1 thread;
- Ray (a Ray started on this machine by nxrt, as `--ray` alone does) with 1 and with 2 workers of
  one CPU (and one onnxruntime thread) each.

Each configuration runs a small and a large cohort (--small, --cases); the marginal cost of a case
is (wall(large) - wall(small)) / (large - small) and the fixed cost (process start, Ray start,
workers, sessions) what is left. The Ray runner's per-case overhead is its marginal cost with one
1-CPU worker against the local runner's with one thread (target <= 10%).

    .venv/bin/python benchmarks/bench_ray.py [--cases 20] [--small 4]

It re-runs itself in a private network namespace with only `lo` (unshare -n, as root), so the Ray
it starts can reach nothing beyond loopback.
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
CONFIGS = {"local, 2 threads": ("local", 2), "local, 1 thread": ("local", 1),
           "Ray, 1 worker x 1 CPU": ("ray", 1), "Ray, 2 workers x 1 CPU": ("ray", 2)}

WORKER = """
import sys, time, json
t0 = time.perf_counter()
from nxrt import Explainer
from nxrt.cohort import run
kind, n, model, out, *cases = sys.argv[1:]
n = int(n)
if kind == "local":
    report = run(Explainer(model, threads=n), cases, out, methods={methods!r}, params={params!r})
else:
    from nxrt.cohort_ray import RayRunner
    report = run(Explainer(model), cases, out, methods={methods!r}, params={params!r},
                 runner=RayRunner(workers=n, cpus=1))
assert report.exit_code == 0, report.lines()
print(json.dumps({{"wall": time.perf_counter() - t0}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--small", type=int, default=4)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        inner = (f"ip link set lo up && exec {sys.executable} {__file__} --inside --cases {args.cases} "
                 f"--small {args.small}")
        raise SystemExit(subprocess.run(["unshare", "-n", "--", "sh", "-c", inner]).returncode)
    params = {"integrated_gradients": {"steps": 32}}
    code = WORKER.format(methods=list(METHODS), params=params)
    with tempfile.TemporaryDirectory() as tmp, \
            resources.as_file(resources.files("nxrt.demo") / "data" / "grader.onnx") as model:
        tmp = Path(tmp)
        cases = [write_brats_case(make_phantom(300 + i), tmp / "cases", f"BraTS-RAY-{i:03d}")
                 for i in range(args.cases)]
        env = dict(os.environ, NXRT_CACHE=str(tmp / "cache"))

        def once(kind: str, n: int, count: int, label: str) -> float:
            out = tmp / f"{label}-{count}".replace(" ", "_").replace(",", "")
            res = subprocess.run([sys.executable, "-c", code, kind, str(n), str(model), str(out),
                                  *map(str, cases[:count])], env=env, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stdout + res.stderr)
            return json.loads(res.stdout.strip().splitlines()[-1])["wall"]

        once("local", 2, 1, "warm-up")  # the augmented graphs into the cache
        walls = {}
        for label, (kind, n) in CONFIGS.items():
            t0 = time.perf_counter()
            small, large = once(kind, n, args.small, label), once(kind, n, args.cases, label)
            walls[label] = (small, large)
            print(f"{label}: {args.small} cases {small:.1f} s, {args.cases} cases {large:.1f} s "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    extra = args.cases - args.small
    marginal = {k: (large - small) / extra for k, (small, large) in walls.items()}
    fixed = {k: small - args.small * marginal[k] for k, (small, _) in walls.items()}
    lines = [
        f"Phantom cases (demo size, BraTS 2021 files) x {len(METHODS)} methods ({', '.join(METHODS)}; IG 32 steps), "
        f"demo grader, model cache warm, each run its own process through `nxrt.cohort.run`; {os.cpu_count()} CPUs. "
        f"Ray: a Ray started on this machine by nxrt (`--ray` alone), workers of 1 CPU and 1 onnxruntime thread. "
        f"Marginal = (wall of {args.cases} cases - wall of {args.small}) / {extra}; fixed = the rest.",
        "",
        f"| runner | wall, {args.small} cases (s) | wall, {args.cases} cases (s) | cases per minute ({args.cases}) "
        "| marginal s per case | fixed s |",
        "|---|---|---|---|---|---|",
    ]
    for k, (small, large) in walls.items():
        lines.append(f"| {k} | {small:.1f} | {large:.1f} | {60 * args.cases / large:.1f} | {marginal[k]:.2f} | "
                     f"{fixed[k]:.1f} |")
    over = marginal["Ray, 1 worker x 1 CPU"] / marginal["local, 1 thread"] - 1
    scale = marginal["Ray, 1 worker x 1 CPU"] / marginal["Ray, 2 workers x 1 CPU"]
    lines += ["", f"Ray runner per-case overhead against the local runner at the same CPU (1 worker x 1 CPU vs "
              f"local, 1 thread): **{100 * over:+.1f}%** (target <= 10%). Two workers against one: "
              f"**{scale:.2f}x** the throughput.", "",
              f"Reproduce: `.venv/bin/python benchmarks/bench_ray.py --cases {args.cases} --small {args.small}`."]
    table = "\n".join(lines)
    print(table)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gradient import write_section_named

    write_section_named(table, "bench_ray", "A cohort on Ray (issue 16)")


if __name__ == "__main__":
    main()
