"""`nxrt demo`: the two shipped demo models explained on the shipped BraTS-like case, offline.

The demo case (`data/case/`, BraTS 2021 file names) is the phantom of nxrt.demo.phantom with seed
DEMO_SEED, high grade, written by `write_brats_case` (a test checks that it regenerates exactly).
Both demo models are explained with the seven NeuroXAI methods and every output of `nxrt explain`
is written: the grader (HGG vs LGG, PyTorch, examples/train_grader.py) scores the grade, the
segmenter (3D U-Net, Keras, examples/train_segmenter.py) the whole tumour (its pooled score).
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import click

DEMO_SEED = 7
CASE = "BraTS-PHANTOM-007"
MODELS = ("grader", "segmenter")
#: the seven NeuroXAI methods per model, with step counts sized for a 2-core CPU: a gradient of the
#: full-resolution U-Net costs ~1.5 s there against ~0.1 s for the strided grader. The segmenter's
#: SmoothGrad noise is 5% of the range: at the default 15% the noisy copies grow speckle "tumours" all
#: over the brain, and their gradients bury the real one (3.8% of the mass in the tumour vs 35%).
#: The segmenter's IG takes 32 steps: at 16 its attributions missed F(x) - F(0) by 13% and the demo
#: printed IG's completeness warning (32: 3.5%, under the 5% the warning starts at)
METHODS = {
    "grader": {"vanilla": {}, "guided_backprop": {}, "integrated_gradients": {"steps": 32},
               "guided_ig": {"steps": 50}, "smoothgrad": {"samples": 16, "seed": 0}, "gradcam": {},
               "guided_gradcam": {}},
    "segmenter": {"vanilla": {}, "guided_backprop": {}, "integrated_gradients": {"steps": 32},
                  "guided_ig": {"steps": 20}, "smoothgrad": {"samples": 8, "noise": 0.05, "seed": 0},
                  "gradcam": {}, "guided_gradcam": {}},
}


def shipped_case() -> resources.abc.Traversable:
    return resources.files("nxrt.demo") / "data" / "case"


def write_demo_case(folder: Path) -> Path:
    """(Re)generate the shipped demo case: `python -c "from nxrt.demo.run import *;
    write_demo_case(Path('nxrt/demo/data/case'))"`. tests/test_phantom.py checks that it matches."""
    import tempfile

    from .phantom import make_phantom, write_brats_case

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_brats_case(make_phantom(DEMO_SEED, "HGG"), tmp, CASE)
        for f in sorted(written.iterdir()):
            shutil.copyfile(f, folder / f.name)
    return folder


def run_demo(out: Path, overwrite: bool = False) -> dict[str, Path]:
    from ..cohort import CaseJob, CaseRequest
    from ..explainer import Explainer
    from ..findings import look_first
    from ..imaging.cases import load_case
    from ..imaging.writer import atomic_path

    out = Path(out)
    case_dir = out / "input" / CASE
    if not case_dir.exists():  # a copy the user can open in a viewer next to the maps
        case_dir.mkdir(parents=True)
        for item in shipped_case().iterdir():
            with resources.as_file(item) as src:
                shutil.copyfile(src, case_dir / item.name)
    models = out / "models"  # copies a pip user can point `nxrt explain` at (the package's are deep in site-packages)
    models.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in MODELS:
        with resources.as_file(resources.files("nxrt.demo") / "data" / f"{name}.onnx") as shipped:
            copy = models / f"{name}.onnx"
            if overwrite or not copy.exists():
                with atomic_path(copy) as tmp:
                    shutil.copyfile(shipped, tmp)
            ex = Explainer(shipped)
            case = load_case(case_dir, channels=ex.card.channels)
            click.echo(f"{name} ({ex.task}):", err=True)

            def progress(method):
                click.echo(f"  {method} ...", err=True)

            request = CaseRequest(list(METHODS[name]), params=METHODS[name], overwrite=overwrite,
                                  warn=lambda line: click.echo(f"nxrt: warning: {line}", err=True))
            summary = CaseJob(ex, out / name, request).explain(case, progress)().summary
        results[name] = out / name / CASE
        _report(name, summary)
    click.echo(f"wrote {out}/grader/{CASE}/ and {out}/segmenter/{CASE}/ (NIfTI maps, prediction, overview.png, "
               f"report.html, summary.json); the case is in {case_dir}/, the models in {models}/")
    for path in results.values():
        click.echo(look_first(path))
    return results


def _report(name: str, summary: dict) -> None:
    from ..findings import explained_line, method_lines, prediction_line

    truth = "; true grade HGG" if "label" in summary["prediction"] else ""
    click.echo(f"{name}: {prediction_line(summary)}{truth}")
    click.echo(f"{name}: {explained_line(summary)}")
    for line in method_lines(summary):
        click.echo(line)
