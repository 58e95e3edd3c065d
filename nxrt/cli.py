"""The `nxrt` command line.

Every error a user can cause ends as one line on stderr and exit code 2; `--debug` shows the
traceback instead. Commands are thin: they parse, call the Python API, and report.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from .errors import NxrtError, NxrtWarning
from .layout import Layout

EXIT_USER_ERROR = 2
LAYOUTS = Layout.names()


class LazyHelpOption(click.Option):
    """An option whose help text is written when help is shown: the method names, aliases and
    defaults come from the registry (its entry points are read then, not at every start)."""

    def __init__(self, *args, help_text, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx):
        self.help = self.help_text()
        return super().get_help_record(ctx)


def _methods_help() -> str:
    from .registry import method_classes

    classes = method_classes()
    names = [f"{n} ({', '.join(c.aliases)})" if c.aliases else n for n, c in sorted(classes.items())]
    return ("Method (repeatable); default: vanilla and gradcam. One of: " + "; ".join(names)
            + ". `nxrt methods` gives each one's parameters.")


def _param_help(what: str, param: str) -> callable:
    """Help for a shortcut option: what it sets and, per method that has the parameter, its default
    (and choices)."""

    def text() -> str:
        from .registry import method_classes

        defaults, choices = [], ()
        for name, cls in sorted(method_classes().items()):
            for p in cls.parameters:
                if p.name == param:
                    defaults.append(f"{name} {p.default}")
                    choices = choices or tuple(p.choices)
        values = {d.rsplit(" ", 1)[1] for d in defaults}
        said = values.pop() if len(values) == 1 and len(defaults) > 1 else ", ".join(defaults)
        line = f"{what} (= -p METHOD.{param}=...; default: {said})"
        if choices:
            line += f"; one of: {', '.join(map(str, choices))}"
        return line

    return text


class NxrtGroup(click.Group):
    """A click group that turns nxrt errors (and unreadable paths) into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NxrtError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"nxrt: error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except OSError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from .errors import describe_os_error

            click.echo(f"nxrt: error: {describe_os_error(exc)}", err=True)
            sys.exit(EXIT_USER_ERROR)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's main, with its usage errors as one line (click prints four) and exit code 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "nxrt"
            click.echo(f"nxrt: error: {exc.format_message().rstrip('.')}; see '{where} --help'", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as exc:
            click.echo(f"nxrt: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("nxrt: stopped (SIGINT)", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=NxrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="nxrt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """nxrt: explain ONNX models of 2D/3D medical images without their training framework."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    # results' warnings are printed by the commands as one `nxrt: warning:` line each, not by Python
    warnings.simplefilter("ignore", NxrtWarning)
    # nibabel logs its header repairs ("sizeof_hdr should be 348; ...") to stderr; nxrt's own
    # messages say what is wrong with a file in one line
    import logging

    logging.getLogger("nibabel.global").setLevel(logging.CRITICAL)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the augmented model (.onnx).")
@click.option("--layer", "layers", multiple=True, help="Also expose this tensor/node and its gradient (repeatable).")
@click.option("--guided", is_flag=True, help="Guided backpropagation through Relu.")
@click.option("--target", type=int, multiple=True,
              help="Bake in the gradient of this class/channel (repeatable: summed); default: seed input.")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), default=None,
              help="Override the model card / inference.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def augment(model: Path, out: Path, layers, guided: bool, target, task, layout, overwrite: bool) -> None:
    """Write MODEL with gradient outputs added, in standard ONNX (runs on any ONNX runtime).

    The result has an extra input `nxrt_seed` [N, K] (the weights of the K scores: a one-hot row
    picks one class) and outputs `nxrt_scores` and `nxrt_grad__<tensor>` for the model input
    and every --layer.
    """
    from . import passes
    from .errors import InputError
    from .graph import load_model, save_model

    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    proto = load_model(model)
    spec = passes.default_score_spec(proto, task=task, layout=layout)
    result = passes.augment(proto, layers=layers, guided=guided, target=list(target) or None, score=spec)
    save_model(result, out)
    outs = ", ".join(o.name for o in result.graph.output)
    click.echo(f"wrote {out} ({spec.task}, {spec.layout}); outputs: {outs}")


def _parse_channels(pairs) -> dict[str, str]:
    from .errors import InputError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--channel '{pair}' must be NAME=FILE, e.g. --channel flair=case_flair.nii.gz")
        name, path = pair.split("=", 1)
        out[name.strip()] = path.strip()
    return out


def _check_writable(out: Path) -> None:
    import os
    import tempfile

    from .errors import InputError

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".nxrt-write-test")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"output folder {out} is not writable ({exc.strerror}); choose another with -o") from None


def _warn(line: str) -> None:
    click.echo(f"nxrt: warning: {line}", err=True)


def _assumptions(explainer, model) -> list[str]:
    """What the card leaves open and nxrt assumed, as the one line to say (it is also in
    summary.json); an empty list when the card says everything."""
    from .imaging.inputs import assumed_settings, assumption_line

    assumed = assumed_settings(explainer)
    return [f"nxrt: note: {assumption_line(model, assumed)}"] if assumed else []


def _is_method(name: str) -> bool:
    from .registry import canonical

    try:
        canonical([name])
    except NxrtError:
        return False
    return True


def _import_nibabel() -> None:
    """(Python's import lock makes a concurrent import of nibabel in the main thread wait for this
    one instead of repeating it.)"""
    import nibabel  # noqa: F401


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("cases", nargs=-1)
@click.option("-m", "--method", "methods", multiple=True, metavar="NAME", cls=LazyHelpOption, help_text=_methods_help)
@click.option("-t", "--target", "targets", multiple=True, metavar="CLASS",
              help="Class / output channel, by index or by the card's label name (e.g. -t HGG); repeatable: scores "
                   "summed. Default: the predicted class / every foreground channel.")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("nxrt_out"),
              show_default=True, help="Output folder: one subfolder per case.")
@click.option("-p", "--param", "assignments", multiple=True, metavar="METHOD.PARAM=VALUE",
              help="Set any parameter of a chosen method, e.g. -p ig.steps=32 -p sg.kind=vargrad (repeatable; "
                   "METHOD may be an alias; `nxrt methods` lists them).")
@click.option("--channel", "channels", multiple=True, metavar="NAME=FILE",
              help="One modality of a case given file by file, e.g. --channel flair=a.nii.gz (repeatable).")
@click.option("--region", default=None, metavar="predicted|MASK",
              help="Segmentation score region: 'predicted' or a mask NIfTI on the case's voxel grid.")
@click.option("--layer", default=None, metavar="NAME",
              help="Grad-CAM layer (ONNX tensor or node name); = -p gradcam.layer=...")
@click.option("--steps", type=int, default=None, cls=LazyHelpOption,
              help_text=_param_help("IG / guided IG steps", "steps"))
@click.option("--samples", type=int, default=None, cls=LazyHelpOption,
              help_text=_param_help("SmoothGrad noisy copies", "samples"))
@click.option("--noise", type=float, default=None, cls=LazyHelpOption,
              help_text=_param_help("SmoothGrad noise sigma, a fraction of the input's value range", "noise"))
@click.option("--rule", default=None, cls=LazyHelpOption, help_text=_param_help("IG quadrature rule", "rule"))
@click.option("--interpolation", type=click.Choice(["linear", "nearest"]), default=None, cls=LazyHelpOption,
              help_text=_param_help("How Grad-CAM-like maps are resampled to the input grid", "interpolation"))
@click.option("--task", type=click.Choice(["classification", "segmentation"]), default=None,
              help="Override the model card's task (default: the card's, else inferred from the output shape and "
                   "said).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="Override the model card's layout (default: the card's, else inferred and said).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "openvino"]), default="auto", show_default=True,
              help="Where the graph runs: cpu = onnxruntime's CPU provider, cuda, openvino (nxrt[openvino]); auto "
                   "= CUDA when a GPU is usable, else OpenVINO for a 3D model when installed, else cpu (README "
                   "\"Backends\"); NXRT_PROVIDER replaces auto's choice.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Samples per session run (default: from the model's activation sizes and --max-memory).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory the automatic batch size may plan for, e.g. 8G (default: half of what is available).")
@click.option("--slice", "slice_spec", default=None, metavar="ORIENTATION[:INDEX]",
              help="A 2D model on 3D cases: the slice to explain (axial, coronal or sagittal, e.g. axial:77); "
                   "default axial through the tumour (or the brain's middle).")
@click.option("--resample", is_flag=True, default=None,
              help="Resample each case into the model's grid instead of centre-cropping/padding it "
                   "(the card's nxrt.grid=resample does the same).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--resume", is_flag=True, help="Skip cases whose outputs are complete.")
@click.option("--evaluate", "evaluating", is_flag=True,
              help="Also evaluate every map (the default metrics, or --metric) and estimate the tumour it points "
                   "at: in summary.json, and metrics.csv / .md / .png for the cohort.")
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="A metric to evaluate (repeatable; implies --evaluate; `nxrt metrics` lists them); set its "
                   "parameters with -p METRIC.PARAM=VALUE.")
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The true tumour of a single case (a mask NIfTI on its grid), instead of its _seg file.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run the cases on a Ray cluster: auto, HOST:PORT or ray://HOST:PORT; --ray alone starts Ray on "
                   "this machine. Every node must see the model, the cases and -o at the same paths.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="With --ray: how many workers (default: the cluster's CPUs / --ray-cpus).")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: CPUs (and onnxruntime threads) per worker.")
@click.option("--colormap", type=click.Choice(["ember", "jet"]), default="ember", show_default=True,
              help="Colour map of the figures: ember (perceptually uniform) or jet (the NeuroXAI paper's).")
@click.option("--convention", type=click.Choice(["neurological", "radiological"]), default="neurological",
              show_default=True, help="Figures: the patient's right on the picture's right (neurological) or left.")
@click.option("--per-modality", is_flag=True,
              help="overview.png: one column per method and input channel, each over its own scan.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.html per case (an offline page: three linked views, sliders, method and scan "
                   "switches) and, for several cases, OUT/index.html.")
def explain(model, cases, methods, targets, out, assignments, channels, region, layer, steps, samples, noise, rule,
            interpolation, task, layout, provider, batch_size, max_memory, slice_spec, resample, overwrite, resume,
            evaluating, metric_names, mask, ray_address, ray_workers, ray_cpus, colormap, convention, per_modality,
            report):
    """Explain MODEL on each CASE and write maps that overlay the scan.

    A CASE is a 4D NIfTI (channels last), a BraTS case folder or file prefix (2021 or 2023 names), or
    the --channel NAME=FILE pairs. Outputs per case: OUT/<case>/<method>.nii.gz (raw, one volume per
    channel), <method>_map.nii.gz (display map), prediction.nii.gz (segmentation), overview.png,
    report.html (an offline page of the case) and summary.json; several cases also get OUT/index.html.
    Several cases: one model load, failures isolated, exit code = number of cases not
    done (128 + the signal when SIGINT/SIGTERM/SIGHUP stopped the run; --resume finishes it).
    """
    _explain(model, cases, methods, targets, out, assignments, channels, region, layer, steps, samples, noise,
             rule, interpolation, task, layout, provider, batch_size, max_memory, slice_spec, resample, overwrite,
             resume, evaluating or bool(metric_names), metric_names, mask, ray_address, ray_workers, ray_cpus,
             {"colormap": colormap, "convention": convention, "per_modality": per_modality, "report": report})


def _evaluate_command(colormap, convention, per_modality, report, **kwargs):
    _explain(**{**kwargs, "evaluating": True},
             figure={"colormap": colormap, "convention": convention, "per_modality": per_modality, "report": report})


main.add_command(click.Command(
    "evaluate", callback=_evaluate_command, params=[p for p in explain.params if p.name != "evaluating"],
    help="Explain MODEL on each CASE and evaluate every map: `nxrt explain --evaluate` (same options). The "
         "metrics (default set, or --metric NAME...) and the estimated tumour (volume, centroid; errors and Dice "
         "against the _seg or --mask) go into each summary.json; a cohort also gets OUT/metrics.csv (a row per "
         "case and method), metrics.md (mean +- sd per method) and metrics.png.",
    short_help="Explain and evaluate the maps (metrics, tumour volume and centroid)."))


def _explain(model, cases, methods, targets, out, assignments, channels, region, layer, steps, samples, noise, rule,
             interpolation, task, layout, provider, batch_size, max_memory, slice_spec, resample, overwrite, resume,
             evaluating, metric_names, mask, ray_address=None, ray_workers=None, ray_cpus=1, figure=None):
    import threading

    # While onnx and the model load: nibabel (0.13 s to import) is imported and the first case's
    # files are read and inflated on helper threads
    threading.Thread(target=_import_nibabel, daemon=True).start()
    from .imaging.cases import prefetch

    prefetch(cases[0] if cases else None)
    from . import region as regions
    from .cohort import CaseRequest, run_cohort, write_cohort_pages
    from .errors import InputError
    from .evaluation.metric import get_metric, split_cli_params
    from .explainer import Explainer
    from .imaging.outputs import default_outputs
    from .registry import canonical, params_from_cli

    methods = canonical(list(methods) or ["vanilla", "gradcam"])  # unknown methods fail before any work
    assignments, metric_params = split_cli_params(assignments)
    metrics = [get_metric(m).name for m in metric_names] if evaluating else None  # unknown ones fail here
    if metric_params and not evaluating:
        raise InputError(f"-p {next(iter(metric_params))}.*: metric parameters need --evaluate or --metric")
    if metric_params:  # a parameter of a metric that will not run would be silently ignored
        from .evaluation.metric import default_metrics

        chosen = metrics or default_metrics(have_mask=True, have_method=True)
        idle = [m for m in metric_params if m not in chosen]
        if idle:
            raise InputError(f"-p {idle[0]}.*: metric '{idle[0]}' is not evaluated (evaluated: {', '.join(chosen)}); "
                             f"add --metric {idle[0]}")
    params = params_from_cli(methods, {"steps": steps, "samples": samples, "noise": noise, "rule": rule,
                                       "interpolation": interpolation, "layer": layer}, assignments)
    runner = None
    if ray_address is not None:
        from .cohort_ray import RayRunner, check_installed

        check_installed()  # without Ray: one line saying which extra to install, before any work
        runner = RayRunner(ray_address, workers=ray_workers, cpus=ray_cpus)
    elif ray_workers is not None or ray_cpus != 1:
        raise InputError("--ray-workers and --ray-cpus apply to --ray runs; add --ray [ADDRESS]")
    channel_files = _parse_channels(channels)
    for case in cases:  # `-m vanilla gradcam` makes gradcam a case: say what was meant
        if not Path(case).exists() and _is_method(str(case)):
            raise InputError(f"{case}: no such case, but a method of that name exists; give each method its own "
                             f"-m (-m {methods[-1]} -m {case})")
    if not cases and not channel_files:
        raise InputError("no CASE given; pass NIfTI files, BraTS case folders or --channel NAME=FILE pairs")
    _check_writable(out)
    ex = Explainer(model, task=task, layout=layout, providers=provider, batch_size=batch_size, max_memory=max_memory)
    items = [("--channel", None)] if channel_files and not cases else [(c, c) for c in cases]
    cohort = len(items) > 1
    if mask is not None and cohort:
        raise InputError("--mask is the true tumour of one case; in a cohort each case's _seg file is used")
    show = cohort or sys.stderr.isatty()  # one case into a pipe or a log: its error stays the only line
    # One case says its notes and warnings once it is done (if it fails, its error is the one line);
    # a cohort says them as they come.
    held: list[str] = _assumptions(ex, model)

    def warn(line: str) -> None:
        if cohort:
            _warn(line)
        else:
            held.append(f"nxrt: warning: {line}")

    target = ex.card.target_indices(targets) or None  # (label names from the card allowed)
    request = CaseRequest(methods, target=target, region=regions.from_cli(region), params=params,
                          slice_spec=slice_spec, resample=resample or None, overwrite=overwrite, resume=resume,
                          channel_files=channel_files or None, warn=warn, metrics=metrics,
                          metric_params=metric_params, mask=mask, outputs=default_outputs(**(figure or {})))

    def progress(k, n, name, method, left):
        if cohort and held:  # said once the work starts (refusals before it stay one line)
            for line in held:
                click.echo(line, err=True)
            held.clear()
        if show:
            click.echo(f"[{k}/{n}] {name}: {method}" + (f", about {left:.0f} s left" if left else ""), err=True)

    report = run_cohort(ex, items, out, request, runner=runner, progress=progress)
    if cohort:
        written = write_cohort_pages(out, request, report)
        if written:
            held.append(f"nxrt: wrote {', '.join(str(p) for p in written)}")
    for line in held:
        click.echo(line, err=True)
    lines = report.lines()
    if not cohort and report.outcomes and report.outcomes[0].summary:  # one case: say what it found
        from .findings import case_lines, look_first

        look = look_first(out / report.outcomes[0].name)
        lines = lines[:-1] + case_lines(report.outcomes[0].summary) + lines[-1:] + ([look] if look else [])
    for line in lines:
        click.echo(line)
    if report.exit_code:
        sys.exit(report.exit_code)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Set a card field (task, layout, channels, labels, normalize, spatial_shape); repeatable.")
def card(model: Path, assignments) -> None:
    """Show the model card (nxrt.* metadata) of MODEL, or edit it with --set (written in place, atomically)."""
    from .card import ModelCard
    from .errors import InputError
    from .graph import load_model, save_model

    proto = load_model(model)
    mc = ModelCard.from_model(proto)
    if assignments:
        for a in assignments:
            if "=" not in a:
                raise InputError(f"--set '{a}' must be KEY=VALUE, e.g. --set task=segmentation")
            key, value = a.split("=", 1)
            mc.set(key.strip(), value)
        _check_card_fits(mc, proto, model)
        import onnx

        external = any(t.data_location == onnx.TensorProto.EXTERNAL
                       for t in onnx.load(str(model), load_external_data=False).graph.initializer)
        save_model(mc.write(proto), model, external=external or None)
    props = mc.to_props()
    if not props:
        click.echo(f"{model}: no nxrt card (set one with --set task=... --set layout=...)")
    for key, value in props.items():
        click.echo(f"{key} = {value}")


def _check_card_fits(mc, proto, model: Path) -> None:
    """A card edit is written only if it fits the model (task vs output rank, labels vs outputs,
    channels vs input channels, spatial shape vs a static input)."""
    from . import passes
    from .card import check_card
    from .graph import GraphInfo

    info = GraphInfo.of(proto)
    inputs = passes.model_inputs(proto)
    out = proto.graph.output[0].name
    task = mc.task or passes.default_score_spec(proto).task
    layout = mc.layout or passes.infer_layout(proto, info)
    check_card(mc, task, layout, info.shape(inputs[0].name) if inputs else (), info.shape(out), f"output '{out}'",
               f"{model}")


def _default_layer(m) -> str | None:
    """Grad-CAM's default layer as `explain` would choose it (ops.default_layer)."""
    from . import passes
    from .errors import NxrtError
    from .ops import default_layer

    try:
        spec = passes.default_score_spec(m.proto)
    except NxrtError:
        return default_layer(m.info, m.proto, passes.infer_layout(m.proto, m.info), None)
    shape = m.info.shape(m.proto.graph.output[0].name) or ()
    outputs = shape[1] if spec.task == "classification" and len(shape) == 2 else \
        spec.layout.channels(shape) if len(shape) >= 3 else None
    return default_layer(m.info, m.proto, spec.layout, outputs if isinstance(outputs, int) else None)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def inspect(model: Path) -> None:
    """Print MODEL's inputs, outputs, card, op coverage and candidate Grad-CAM layers."""
    from .explainer import load
    from .ops import coverage

    m = load(model)
    g = m.proto.graph
    click.echo(f"model: {model} (opset {max(o.version for o in m.proto.opset_import if o.domain in ('', 'ai.onnx'))},"
               f" {len(g.node)} nodes)")
    for label, values in (("inputs", m.proto.graph.input), ("outputs", g.output)):
        inits = {t.name for t in g.initializer}
        for v in values:
            if v.name not in inits:
                shape = m.info.shape(v.name)
                click.echo(f"{label[:-1]:7s} {v.name} {list(shape) if shape else '?'}")
    props = m.card.to_props()
    click.echo("card:   " + (", ".join(f"{k}={v}" for k, v in props.items()) or "none"))
    cover = coverage(m.proto)
    click.echo("differentiable ops: " + ", ".join(f"{o} x{n}" for o, n in cover.differentiable.items()))
    click.echo("ops without a rule: " + (", ".join(f"{o} x{n}" for o, n in cover.without_rule.items()) or "none") +
               (" (fine unless they lie on the gradient path)" if cover.without_rule else ""))
    if cover.random:
        click.echo("random ops (refused: the model was exported in training mode): " +
                   ", ".join(f"{o} x{n}" for o, n in cover.random.items()))
    layers = m.conv_layers()
    click.echo(f"Grad-CAM layers ({len(layers)}; default {_default_layer(m) or 'none'}): " + ", ".join(layers[-6:]) +
               (f" (+{len(layers) - 6} earlier)" if len(layers) > 6 else ""))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("case")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default: <case>_layers.png).")
@click.option("-t", "--target", "targets", multiple=True, metavar="CLASS",
              help="Class / output channel, by index or label name (repeatable); default: as for explain.")
@click.option("--orientation", type=click.Choice(["axial", "coronal", "sagittal"]), default="axial",
              show_default=True)
@click.option("--slice", "slice_spec", default=None, metavar="ORIENTATION[:INDEX]",
              help="A 2D model on a 3D case: the slice to explain (as for explain).")
@click.option("--colormap", type=click.Choice(["ember", "jet"]), default="ember", show_default=True,
              help="Colour map: ember (perceptually uniform) or jet (the NeuroXAI paper's).")
@click.option("--convention", type=click.Choice(["neurological", "radiological"]), default="neurological",
              show_default=True, help="The patient's right on the picture's right (neurological) or left.")
@click.option("--overwrite", is_flag=True)
def layers(model, case, out, targets, orientation, slice_spec, colormap, convention, overwrite):
    """Grad-CAM at every Conv layer of MODEL on CASE, one panel per layer (the paper's Fig. 5)."""
    import numpy as np

    from .errors import InputError
    from .explainer import Explainer
    from .imaging import figures
    from .imaging.cases import load_case
    from .imaging.inputs import centre_of_mass, model_input, model_spatial_rank
    from .imaging.orientation import view_of_axis
    from .imaging.preprocess import to_image_channels_last
    from .postprocess import display_map, display_scale

    ex = Explainer(model)
    c = load_case(case, channels=ex.card.channels)
    out = out or Path(f"{c.name}_layers.png")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    if slice_spec is None and model_spatial_rank(ex) == 2 and len(c.spatial_shape) == 3:
        slice_spec = orientation  # a 2D model: --orientation picks the slice's orientation
    x, geometry, slab, lift = model_input(ex, c, slice_spec)
    explanation = ex.explain(x, "layer_sweep", target=ex.card.target_indices(targets) or None)
    sweep = (lift(explanation.attribution) if lift else explanation.attribution)[0]
    names = explanation.extras["layers"]
    maps = to_image_channels_last(sweep, ex.layout, geometry)
    bg = c.channels.index("flair") if "flair" in c.channels else 0
    background = c.data[..., bg]
    ijk = centre_of_mass(c.seg > 0) if c.seg is not None else None
    center = list(ijk) if ijk is not None else [s / 2 for s in c.spatial_shape]
    if slab is not None:  # a 2D model: only its slice (whose 99th percentile clips the maps) is shown
        keep = tuple(slice(slab[1], slab[1] + 1) if a == slab[0] else slice(None) for a in range(3))
        maps, background, center[slab[0]] = maps[keep], background[keep], 0
        orientation = view_of_axis(slab[0], c.affine)
    layer_maps = [np.abs(maps[..., k]) for k in range(len(names))]
    scales = [display_scale(m) if m.any() else 0.0 for m in layer_maps]  # what 1 stands for, per layer
    maps = [display_map(maps[..., k:k + 1], channel_axis=-1) for k in range(len(names))]
    label_names = ex.card.labels or []
    target = [label_names[t] if t < len(label_names) else str(t) for t in explanation.targets[0]]
    title = (f"{c.name}: Grad-CAM at each of {len(names)} Conv layers, target {' + '.join(target)} "
             f"(each layer on its own scale)")
    figures.layer_grid(out, background, maps, names, center, orientation, spacing=c.spacing, affine=c.affine,
                       title=title, scales=scales, colormap=colormap, convention=convention)
    for line in _assumptions(ex, model):  # said after the work: an error stays the only line
        click.echo(line, err=True)
    for line in explanation.warnings:
        _warn(f"{c.name}: layer_sweep: {line}")
    click.echo(f"wrote {out} ({len(names)} layers)")


@main.command()
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Output folder (the maps, and copies of the case and the two models).")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo run.")
def demo(out: Path, overwrite: bool) -> None:
    """Explain the two shipped demo models, a glioma grader (HGG vs LGG) and a tumour segmenter, on a
    BraTS-like phantom with the seven NeuroXAI methods (offline, a few minutes on 2 CPU cores).

    OUT gets the maps (OUT/grader/CASE/, OUT/segmenter/CASE/), the case (OUT/input/CASE/) and the
    models (OUT/models/*.onnx), so that `nxrt explain OUT/models/segmenter.onnx OUT/input/CASE`
    works from a pip install."""
    from .demo.run import run_demo

    _check_writable(out)
    run_demo(out, overwrite=overwrite)


@main.group("cache", invoke_without_command=True)
@click.pass_context
def cache_group(ctx: click.Context) -> None:
    """The disk cache of augmented models ($NXRT_CACHE, default ~/.cache/nxrt; capped by
    $NXRT_CACHE_MAX, default 2G, least recently used entries removed first)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(cache_info)


@cache_group.command("info")
def cache_info() -> None:
    """Where the cache is, how many entries it holds and their size, and its cap."""
    from .cache import cache_dir, cache_max, entries

    root = cache_dir()
    if root is None:
        click.echo("cache: off (NXRT_CACHE=off)")
        return
    found = entries(root)
    size = sum(s for _, s, _ in found)
    click.echo(f"cache: {root}\nentries: {len(found)}, {size / 2**20:.1f} MiB of {cache_max() / 2**20:.0f} MiB "
               "(NXRT_CACHE_MAX)")


@cache_group.command("clear")
def cache_clear() -> None:
    """Remove every cached augmented model (they are rebuilt when next needed)."""
    from .cache import cache_dir, clear

    count, size = clear()
    click.echo(f"removed {count} entr{'y' if count == 1 else 'ies'} ({size / 2**20:.1f} MiB) from {cache_dir()}")


@main.command("methods")
def list_methods() -> None:
    """List the registered explanation methods (built-ins and installed plugins) and their parameters
    with their defaults (set any of them with `nxrt explain -p METHOD.PARAM=VALUE`)."""
    from .registry import method_classes

    classes = method_classes()
    width = max((len(n) for n in classes), default=0)
    for name in sorted(classes):
        cls = classes[name]
        alias = f" ({', '.join(cls.aliases)})" if cls.aliases else ""
        click.echo(f"{name:<{width}}  {cls.summary}{alias}")
        for p in cls.parameters:
            default = "none" if p.default is None else p.default
            click.echo(f"{'':<{width}}    -p {name}.{p.name}={default}  ({p.describe()})")


@main.command("metrics")
def list_metrics() -> None:
    """List the registered metrics of explanations (built-ins and installed plugins), their family,
    what they need and their parameters with defaults (set them with -p METRIC.PARAM=VALUE)."""
    from .evaluation.metric import metric_classes

    classes = metric_classes()
    width = max((len(n) for n in classes), default=0)
    for name in sorted(classes, key=lambda n: (classes[n].family, n)):
        cls = classes[name]
        needs = [n for n in cls.needs if n != "model"]
        extra = f" [{cls.family}{'; needs ' + ', '.join(needs) if needs else ''}" + \
            ("]" if cls.default else "; on request]")
        click.echo(f"{name:<{width}}  {cls.summary}{extra}")
        for p in cls.parameters:
            default = "none" if p.default is None else p.default
            click.echo(f"{'':<{width}}    -p {name}.{p.name}={default}  ({p.describe()})")


@main.command()
@click.argument("framework", type=click.Choice(["keras", "torch", "tf"]))
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the ONNX model (.onnx).")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), required=True)
@click.option("--channels", required=True, help="Input channel names in order, e.g. flair,t1,t1ce,t2.")
@click.option("--labels", default=None, help="Class / output channel names, e.g. HGG,LGG.")
@click.option("--normalize", type=click.Choice(["zscore", "minmax", "none"]), default=None,
              help="Input preprocessing the model expects.")
@click.option("--spatial-shape", default=None, help="Crop/pad target, e.g. 128,128,128 (default: the input size).")
@click.option("--input-shape", default=None,
              help="torch: one sample's input shape C,D,H,W (no batch axis); needed for TorchScript.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: 17; torch dynamo 18).")
@click.option("--legacy", is_flag=True, help="torch: the legacy TorchScript exporter instead of dynamo.")
@click.option("--unsafe", is_flag=True,
              help="keras: load .keras files whose Lambda layers run Python code (trusted files only).")
@click.option("--input-node", default=None, help="tf graph: the image placeholder (default: the only float one).")
@click.option("--output-node", "output_nodes", multiple=True,
              help="tf graph: an output node (repeatable; default: the nodes nothing reads).")
@click.option("--flag", "flags", multiple=True, metavar="NAME=VALUE",
              help="tf graph: set a placeholder-with-default (training switches are set to inference anyway).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def convert(framework, src, out, task, channels, labels, normalize, spatial_shape, input_shape, opset, legacy,
            unsafe, input_node, output_nodes, flags, overwrite):
    """Convert a Keras, PyTorch or TensorFlow model SRC to ONNX with its nxrt model card, verified before it
    is written.

    keras SRC: a .keras file or a SavedModel folder. tf SRC: a TF1 frozen graph (.pb; its training
    switches set to inference and said) or a SavedModel folder. torch SRC: a torch.export program (.pt2) or a
    TorchScript file; pickled checkpoints (torch.save) are refused because loading them runs
    arbitrary code. The ONNX model is checked against the framework on a random input (relative
    error <= 1e-4) and written only if it agrees. Needs the extra: pip install 'nxrt[keras]' / 'nxrt[torch]'.
    """
    from .errors import InputError

    if framework != "tf" and (input_node or output_nodes or flags):
        raise InputError("--input-node, --output-node and --flag apply to tf graphs only")
    if framework == "tf":
        for flag, given in (("--legacy", legacy), ("--input-shape", input_shape), ("--unsafe", unsafe)):
            if given:
                raise InputError(f"{flag} does not apply to tf graphs; leave it out")
        from .converters.common import parse_shape
        from .converters.tf import convert_tf

        pairs = {}
        for item in flags:
            name, eq, value = item.partition("=")
            if not eq or not name.strip():
                raise InputError(f"--flag '{item}' must be NAME=VALUE, e.g. --flag is_training=false")
            pairs[name.strip()] = value
        result = convert_tf(src, out, task=task, channels=channels, labels=labels, normalize=normalize,
                            spatial_shape=parse_shape(spatial_shape, "--spatial-shape"), input_node=input_node,
                            output_nodes=list(output_nodes) or None, flags=pairs, opset=opset or 17,
                            overwrite=overwrite)
        reference = "TensorFlow"
        for name, value in result.get("flags", {}).items():
            click.echo(f"set {name} = {value}" + ("" if name in pairs else " (its inference value)"), err=True)
    elif framework == "keras":
        for flag, given in (("--legacy", legacy), ("--input-shape", input_shape)):
            if given:
                raise InputError(f"{flag} applies to torch models only; leave it out for keras")
        from .converters.common import parse_shape
        from .converters.keras import convert_keras

        result = convert_keras(src, out, task=task, channels=channels, labels=labels, normalize=normalize,
                               spatial_shape=parse_shape(spatial_shape, "--spatial-shape"), opset=opset or 17,
                               unsafe=unsafe, overwrite=overwrite)
        reference = "Keras"
    else:
        if unsafe:
            raise InputError("--unsafe applies to keras models only; torch pickles are never loaded")
        from .converters.common import parse_shape
        from .converters.torch import convert_torch

        result = convert_torch(src, out, task=task, channels=channels, labels=labels, normalize=normalize,
                               spatial_shape=parse_shape(spatial_shape, "--spatial-shape"),
                               example_shape=parse_shape(input_shape, "--input-shape"), dynamo=not legacy,
                               opset=opset, overwrite=overwrite)
        reference = "torch"

    def dims(shape):
        return "[" + ",".join(str(d) if isinstance(d, int) else "?" if i else "N" for i, d in enumerate(shape)) + "]"

    click.echo(f"wrote {result['path']} ({result['exporter']}, opset {result['opset']})")
    for label, values in (("input ", result["inputs"]), ("output", result["outputs"])):
        for name, shape in values.items():
            click.echo(f"  {label} {name} {dims(shape)}")
    click.echo("  card   " + ", ".join(f"{k}={v}" for k, v in result["card"].to_props().items()))
    click.echo(f"verified against {reference} on a random input {dims(result['verify_shape'])}: "
               f"max abs error {result['max_abs_error']:.2e}, relative error {result['rel_error']:.2e}")


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="nxrt")
