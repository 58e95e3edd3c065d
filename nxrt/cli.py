"""The `nxrt` command line.

Every error a user can cause ends as one line on stderr and exit code 2; `--debug` shows the
traceback instead. Commands are thin: they parse, call the Python API, and report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import NxrtError

EXIT_USER_ERROR = 2


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
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"nxrt: error:{where}: {exc.strerror or exc}; check the path and its permissions",
                       err=True)
            sys.exit(EXIT_USER_ERROR)


@click.group(cls=NxrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="nxrt")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """nxrt: explain ONNX models of 2D/3D medical images without their training framework."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


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
@click.option("--layout", type=click.Choice(["channels_first", "channels_last"]), default=None)
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


@main.command("methods")
def list_methods() -> None:
    """List the registered explanation methods (built-ins and installed plugins)."""
    from .registry import method_classes

    classes = method_classes()
    width = max((len(n) for n in classes), default=0)
    for name in sorted(classes):
        cls = classes[name]
        alias = f" ({', '.join(cls.aliases)})" if cls.aliases else ""
        click.echo(f"{name:<{width}}  {cls.summary}{alias}")


if __name__ == "__main__":  # pragma: no cover
    main()
