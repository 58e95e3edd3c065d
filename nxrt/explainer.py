"""The public Python API: `load`/`Model` and `Explainer`, whose `explain` returns an `Explanation`.

An Explainer holds one model, its score definition (`passes.ScoreSpec`) and a session pool
(`engine.SessionPool`, through `sessions.ModelSessions`): every method of one Explainer reuses the
same sessions. A call checks the input and the parameters, then explains each sample with a fresh
`Context` (what the method plugin sees) and returns the result as a value.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from . import passes
from .card import ModelCard, check_card
from .context import Context
from .engine import SessionPool, batches, parse_bytes, resolve_providers
from .errors import InputError, ModelError, NxrtWarning
from .explanation import Explanation, merge_extras
from .graph import GraphInfo, load_model
from .layout import Layout
from .ops import check_deterministic, conv_outputs
from .region import Region, score_region
from .registry import MethodResult, get_method
from .sessions import ModelSessions


def load(model: str | os.PathLike | onnx.ModelProto) -> Model:
    """Load and validate an ONNX model; raises nxrt.ModelError with a clear message."""
    return Model(load_model(model), source=None if isinstance(model, onnx.ModelProto) else str(model))


class Model:
    """A loaded ONNX model with its card (what `nxrt.load` returns)."""

    def __init__(self, proto: onnx.ModelProto, source: str | None = None):
        self.proto = proto
        self.source = source
        self.card = ModelCard.from_model(proto)
        inputs = passes.model_inputs(proto)
        if not inputs:
            raise ModelError(f"{source or 'model'}: the graph has no inputs")
        self.input = inputs[0]
        self.info = GraphInfo.of(proto)

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def input_shape(self) -> tuple:
        return self.info.shape(self.input.name) or ()

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the model's content: the key of its sessions and cache entries."""
        from .cache import model_hash

        return model_hash(self.proto)

    @functools.cached_property
    def file_sha256(self) -> str | None:
        """SHA-256 of the model file as it is on disk (what `sha256sum model.onnx` prints), or None
        for a model given in memory."""
        if not self.source or not os.path.isfile(self.source):
            return None
        import hashlib

        h = hashlib.sha256()
        with open(self.source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def conv_layers(self) -> list[str]:
        """Output tensors of every Conv/ConvTranspose node, in graph order (Grad-CAM candidates)."""
        return conv_outputs(self.proto)


class Explainer:
    """Explain one ONNX model with any registered method.

    task/layout: override the model card (None: card, else inferred from the graph; an error says
    which argument to give when neither works). providers: 'cpu', 'cuda', 'auto' or onnxruntime
    provider names. batch_size: samples per session call inside a method (None: decided for each
    session from its graph's activation sizes and the free memory). score: 'output' (as exported)
    or 'logits'. output: which graph output to explain (default the first). seed: RNG seed of
    noisy methods. max_memory: the memory the automatic batch sizes may plan for (bytes or '8G';
    default half of the memory available when a session is built).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, task: str | None = None,
                 layout: str | Layout | None = None, providers: str | Sequence[str] | None = None,
                 batch_size: int | None = None, score: str = "output", output: str | None = None,
                 seed: int = 0, threads: int | None = None, max_memory: int | str | None = None):
        self.model = model if isinstance(model, Model) else load(model)
        check_deterministic(self.model.proto, self.model.source)
        if score not in ("output", "logits"):
            raise InputError(f"score '{score}' is not one of output, logits")
        self.spec = passes.default_score_spec(self.model.proto, task=task, layout=layout, output=output,
                                              logits=score == "logits")
        given = {"task": task, "layout": layout}
        #: what neither the caller nor the card said, so nxrt inferred it from the graph
        self.assumed = {k: str(getattr(self.spec, k)) for k in ("task", "layout")
                        if given[k] is None and getattr(self.card, k) is None}
        if self.spec.task == "segmentation" and self.card.activation is None and \
                not passes.evident_activation(self.model.proto, self.output_name):
            self.assumed["activation"] = self.spec.activation
        check_card(self.card, self.spec.task, self.spec.layout, self.model.input_shape,
                   self.model.info.shape(self.output_name), f"output '{self.output_name}'",
                   self.model.source or "the model card")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.seed = seed
        #: the settings another process needs to build this Explainer again (`recipe`)
        self.settings = {"task": task, "layout": None if layout is None else str(layout), "providers": providers,
                         "batch_size": batch_size, "score": score, "output": output, "seed": seed,
                         "threads": threads, "max_memory": max_memory}
        # 'auto' is decided here, where the model's spatial rank is known (engine.resolve_providers)
        chosen = resolve_providers(providers, spatial_rank=len(self.model.input_shape) - 2)
        self.pool = SessionPool(chosen, threads, batch_size, None if max_memory is None else parse_bytes(max_memory))
        self.providers = self.pool.providers
        self.sessions = ModelSessions(self.model, self.spec, self.pool)

    # ------------------------------------------------------------------ properties

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def layout(self) -> Layout:
        return self.spec.layout

    @property
    def output_name(self) -> str:
        """The graph output being explained (the first unless `output=` was given)."""
        return self.spec.output or self.model.proto.graph.output[0].name

    def stats(self) -> dict:
        """What this Explainer built: sessions held and built, augmented graphs built (not served
        by the disk cache), and the seconds spent building graphs and sessions."""
        return {**self.pool.stats(), "graphs_built": self.sessions.graphs_built}

    # ------------------------------------------------------------------ public API

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's explained output (first graph output unless `output=` was given)."""
        x = self.check_input(x)
        pooled = self.sessions.forward(x.shape[1:], None)
        return np.concatenate([pooled.run([self.output_name], {self.model.input_name: x[c]})[0]
                               for c in batches(x.shape[0], pooled.batch_size)], axis=0)

    def predict_and_score(self, x: np.ndarray, region=None) -> tuple[np.ndarray, np.ndarray]:
        """(model output, [N, K] scores) from one forward pass."""
        x = self.check_input(x)
        ctx = self.context(x, region, sample=x)
        scores = ctx.forward(x)
        return ctx.forward_at_sample[0], scores

    def scores(self, x: np.ndarray, region=None) -> np.ndarray:
        """The [N, K] scores being explained (classification outputs or the pooled segmentation head)."""
        x = self.check_input(x)
        return self.context(x, region).forward(x)

    def explain(self, x: np.ndarray, method: str = "vanilla", target=None, region=None, keep_forward=None,
                progress=None, **params) -> Explanation:
        """Explain x with `method` for `target`; returns an `Explanation` (the raw, signed
        attribution shaped like x — CAM methods: channel axis 1 — and how it was made).

        target: an int, a list of ints (their scores summed) or None (classification: the predicted
        class of each sample; segmentation: every foreground channel, i.e. all but channel 0).
        region (segmentation only): None (mean over all voxels), "predicted" (voxels whose argmax is
        the channel, mask held constant) or a mask array over the output's spatial grid.
        params: the method's parameters (see `nxrt methods`), each checked before anything runs.
        progress(done, total, unit): told how far long methods are (IG path points, SmoothGrad
        copies, occlusion patches, guided IG steps).
        The model's output and scores at x come with the result whenever a pass evaluated the model
        there (`Explanation.output` / `.scores`); `keep_forward` is no longer needed (deprecated).
        """
        if keep_forward is not None:
            warnings.warn("explain(keep_forward=...) is deprecated: the Explanation always carries the "
                          "output and scores a pass computed at x (e.output, e.scores)", DeprecationWarning,
                          stacklevel=2)
        impl = get_method(method)
        params = impl.resolve_params(params)
        x = self.check_input(x)
        region = self.region(region)
        rng = np.random.default_rng(self.seed)
        t0, built = time.perf_counter(), self.pool.stats()["build_seconds"]
        outs, targets, forwards, extras, notes = [], [], [], [], []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            ctx = Context(self.sessions, xi.shape[1:], region, rng, sample=xi, progress=progress)
            ti = resolve_target(target, self.task, ctx, xi)
            result = impl.explain(ctx, xi, ti, **params)
            if not isinstance(result, MethodResult):
                result = MethodResult(result)
            targets.append(ti)
            outs.append(np.asarray(result.attribution, dtype=np.float32))
            extras.append(result.extras)
            forwards.append(ctx.forward_at_sample)
            notes.extend(n for n in [*ctx.notes, *result.warnings] if n not in notes)
        output = scores = None
        if all(f is not None for f in forwards):
            output, scores = (np.concatenate(part, axis=0) for part in zip(*forwards, strict=True))
        for note in notes:  # Python callers see them too (once per call site, Python's default)
            warnings.warn(f"{impl.name}: {note}", NxrtWarning, stacklevel=2)
        return Explanation(np.concatenate(outs, axis=0), impl.name, params, targets, output, scores,
                           merge_extras(extras), time.perf_counter() - t0,
                           self.pool.stats()["build_seconds"] - built, notes)

    def recipe(self, **changes) -> ExplainerRecipe:
        """What another process (a cluster worker) needs to build this Explainer again: the model
        file's absolute path (the file must be readable there too), or the model's bytes when it
        was given in memory, and the constructor's settings; `changes` replace settings (e.g.
        threads=1 for a worker given one CPU)."""
        unknown = set(changes) - set(self.settings)
        if unknown:
            raise TypeError(f"unknown Explainer settings: {', '.join(sorted(unknown))}")
        source = self.model.source
        model = os.path.abspath(source) if source and os.path.isfile(source) else self.model.proto.SerializeToString()
        return ExplainerRecipe(model, {**self.settings, **changes})

    def with_weights(self, proto: onnx.ModelProto) -> Explainer:
        """An Explainer of `proto` -- this model with other weights (the same graph, e.g. the
        randomised models of an MPRT sanity check) -- with this one's settings (score definition,
        providers, threads, batch size, memory budget, seed). It has its own session pool, freed
        with it, and its augmented graphs are not stored in the disk cache (one-off models)."""
        import copy

        new = copy.copy(self)
        new.model = Model(proto, None)
        new.pool = SessionPool(self.pool.providers, self.pool.threads, self.pool.batch_size, self.pool.max_memory)
        new.sessions = ModelSessions(new.model, self.spec, new.pool)
        new.sessions.disk_cache = False
        return new

    # ------------------------------------------------------------------ helpers

    def context(self, x: np.ndarray, region=None, sample: np.ndarray | None = None) -> Context:
        """A Context for inputs shaped like x (what a method plugin sees), e.g. to call a method
        by hand or to ask `ctx.num_scores`."""
        return Context(self.sessions, tuple(x.shape[1:]), self.region(region), np.random.default_rng(self.seed),
                       sample=sample)

    def region(self, region) -> Region:
        """The score Region of an `explain(region=...)` value (checked against the model)."""
        out_rank = len(self.model.info.shape(self.output_name) or ()) or len(self.model.input_shape)
        return score_region(region, self.task, out_rank - 2)

    def check_input(self, x) -> np.ndarray:
        return check_input(x, self.model.input_name, self.model.input_shape)


@dataclass(frozen=True)
class ExplainerRecipe:
    """An Explainer as plain, picklable data (`Explainer.recipe`): a model path or the model's
    bytes, and the constructor's settings. `build()` makes the Explainer."""

    model: str | bytes
    settings: dict

    def build(self) -> Explainer:
        model = self.model if isinstance(self.model, str) else onnx.load_from_string(self.model)
        return Explainer(model, **self.settings)


def check_input(x, name: str, want: tuple) -> np.ndarray:
    """x as a C-contiguous float32 array, after checking it against the model input `name` of
    shape `want` (batch axis first); one-line InputErrors otherwise."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"x must be a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"x has dtype {x.dtype}; give float32 values (the model input is float)")
    if want and x.ndim != len(want):
        raise InputError(f"x has shape {x.shape} but the model input '{name}' has rank "
                         f"{len(want)} ({_fmt_shape(want)}, batch axis first)")
    for axis, (have, need) in enumerate(zip(x.shape, want, strict=False)):
        if axis and isinstance(need, int) and need > 0 and have != need:
            raise InputError(f"x has shape {x.shape} but the model input '{name}' "
                             f"expects {_fmt_shape(want)} (axis {axis} must be {need})")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise InputError(f"x contains {bad} NaN/Inf value(s); clean or mask the input first")
    return np.ascontiguousarray(x, dtype=np.float32)


def resolve_target(target, task: str, ctx: Context, x: np.ndarray) -> list[int]:
    """The score indices to explain for the sample x: `target` checked against the number of
    scores, or by default (None) the predicted class (a forward pass at x, which the context keeps
    when x is its sample) or, for segmentation, every foreground channel: all but channel 0 (the
    background) for softmax channels, all of them for independent (sigmoid / logit) channels."""
    k = ctx.num_scores
    if target is None:
        if task == "segmentation":
            return list(range(1, k)) if k > 1 and not ctx.multilabel else list(range(k))
        return [int(np.argmax(ctx.forward(x)[0]))]
    targets = [target] if np.isscalar(target) else list(target)
    if not targets:
        raise InputError("target is an empty list; give a class index, a list of indices, or None")
    out = []
    for t in targets:
        if isinstance(t, bool | float) or not isinstance(t, int | np.integer):
            raise InputError(f"target {t!r} is not an integer class/channel index")
        if not 0 <= int(t) < k:
            raise InputError(f"target {t} is out of range: the model has {k} "
                             f"{'channels' if task == 'segmentation' else 'classes'} (0..{k - 1})")
        out.append(int(t))
    return out


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"

