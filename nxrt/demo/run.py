"""`nxrt demo`: the shipped demo model explained on a BraTS-like case, offline.

The demo case is a phantom (nxrt.demo.phantom, seed DEMO_SEED, high grade) written as BraTS 2021
files; the grader (HGG vs LGG, trained by examples/train_grader.py) is explained with the seven
NeuroXAI methods and every output of `nxrt explain` is written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

DEMO_SEED = 7
CASE = "BraTS-PHANTOM-007"
#: the seven NeuroXAI methods, with step counts sized for a 2-core CPU (about a minute in all)
METHODS = {
    "vanilla": {}, "guided_backprop": {}, "integrated_gradients": {"steps": 32},
    "guided_ig": {"steps": 50}, "smoothgrad": {"samples": 16, "seed": 0}, "gradcam": {}, "guided_gradcam": {},
}


def run_demo(out: Path, overwrite: bool = False) -> Path:
    from ..explainer import Explainer
    from ..imaging.cases import load_case
    from ..imaging.pipeline import explain_case
    from .phantom import make_phantom, write_brats_case

    out = Path(out)
    case_dir = out / "input"
    if not (case_dir / CASE).exists():
        write_brats_case(make_phantom(DEMO_SEED, "HGG"), case_dir, CASE)
    with resources.as_file(resources.files("nxrt.demo") / "data" / "grader.onnx") as model:
        ex = Explainer(model)
        case = load_case(case_dir / CASE, channels=ex.card.channels)

        def progress(method):
            click.echo(f"  {method} ...", err=True)

        summary = explain_case(ex, case, list(METHODS), out, params=METHODS, overwrite=overwrite,
                               progress=progress)
    result = out / CASE
    pred = summary["prediction"]
    click.echo(f"grader: {pred['label']} (scores {', '.join(f'{s:.2f}' for s in summary['scores'])}); "
               f"true grade HGG")
    for name, m in summary["methods"].items():
        share = m.get("share_in_true_tumour")
        click.echo(f"  {name:22s} {m['seconds']:6.1f} s" + (f"   {share:5.1%} of the attribution inside the tumour"
                                                           if share is not None else ""))
    click.echo(f"wrote {result}/ (NIfTI maps, overview.png, summary.json); the case is in {case_dir / CASE}/")
    click.echo(f"look first at {result / 'overview.png'}")
    return result
