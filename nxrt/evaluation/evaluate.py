"""`evaluate`: metrics of an explanation, one sample at a time, batched on the model's sessions."""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..registry import attribution_of
from .metric import default_metrics, get_metric


@dataclass
class EvaluationContext:
    """What a metric sees of one sample: the model (scores of perturbed inputs, batched), the
    sample, its resolved target, and the method that made the map (to explain again)."""

    explainer: Any
    x: np.ndarray  # [1, ...] in the model's layout
    target: list[int]
    region: Any = None
    method: str | None = None
    method_params: dict = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    _ctx: Any = None

    @property
    def layout(self):
        return self.explainer.layout

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[a] for a in self.layout.spatial_axes(self.x.ndim))

    @property
    def context(self):
        """The runtime Context of this sample (its region feed is the sample's, held constant
        for every perturbed input, as explain does)."""
        if self._ctx is None:
            self._ctx = self.explainer.context(self.x, self.region, sample=self.x)
        return self._ctx

    @property
    def batch_size(self) -> int:
        """Inputs per forward-session call."""
        return self.context.forward_batch_size

    def scores(self, xs: np.ndarray, softmax: bool = False) -> np.ndarray:
        """The explained score (the target's scores summed, as explain uses them) of each input of
        a stack [n, ...], in chunks of the forward session's batch size. softmax: a classifier's
        class probabilities instead, when its output is not already one (no Softmax / Sigmoid /
        LogSoftmax at the end); a segmenter's scores are used as they are."""
        s = self.context.forward(np.ascontiguousarray(xs, dtype=np.float32)).astype(np.float64)
        if softmax and self.explainer.task == "classification":
            kind = self._output_activation
            if kind == "LogSoftmax":
                s = np.exp(s)
            elif kind is None:
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
        return s[:, self.target].sum(axis=1)

    def shared(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """compute(), remembered for this model and score, sample, region and target under `key`, a
        description of what it depends on besides them (never of the evaluated map). Metrics whose
        perturbed inputs do not depend on the map (faithfulness correlation's random subsets) give
        the same scores for every method evaluated on a sample: they are computed once."""
        full = (self.explainer.model.digest, self.explainer.spec.key(), self._sample_digest, _region_key(self.region),
                tuple(self.target), key)
        if full in _SHARED:
            _SHARED.move_to_end(full)
            return _SHARED[full].copy()
        value = np.asarray(compute())
        _SHARED[full] = value.copy()
        while len(_SHARED) > _SHARED_ENTRIES:
            _SHARED.popitem(last=False)
        return value

    @functools.cached_property
    def _sample_digest(self) -> str:
        return _digest(self.x)

    @functools.cached_property
    def _output_activation(self) -> str | None:
        graph = self.explainer.model.proto.graph
        producer = next((n for n in graph.node if self.explainer.output_name in n.output), None)
        return producer.op_type if producer is not None and producer.op_type in ("Softmax", "Sigmoid",
                                                                                  "LogSoftmax") else None

    def explain(self, x: np.ndarray | None = None, explainer=None, **override) -> np.ndarray:
        """The attribution of `x` (default the sample) by the method that made the evaluated map,
        with its parameters (and `override`); `explainer`: another one (e.g. a randomised model)."""
        if self.method is None:
            raise InputError("this metric explains again: pass the Explanation itself as attribution, or method=")
        ex = explainer or self.explainer
        e = ex.explain(self.x if x is None else x, self.method, target=self.target, region=self.region,
                       **{**self.method_params, **override})
        return e.attribution

    def explain_many(self, xs: np.ndarray, explainer=None) -> np.ndarray:
        """The attributions of a stack of inputs [n, ...] (perturbed copies of the sample) for the
        sample's target, by the evaluated method: a gradient batch at a time for methods that
        take stacks (`Method.stacks_samples`), else one `explain` per input."""
        from ..registry import get_method

        if self.method is None:
            raise InputError("this metric explains again: pass the Explanation itself as attribution, or method=")
        ex = explainer or self.explainer
        impl = get_method(self.method)
        if not impl.stacks_samples:
            return np.concatenate([self.explain(xs[i:i + 1], explainer=ex) for i in range(xs.shape[0])], axis=0)
        params = impl.resolve_params(self.method_params)
        ctx = ex.context(xs[:1], self.region, sample=self.x)
        out = []
        for start in range(0, xs.shape[0], max(1, ctx.batch_size)):
            part = np.ascontiguousarray(xs[start:start + ctx.batch_size], dtype=np.float32)
            out.append(attribution_of(impl.explain(ctx, part, self.target, **params)))
        return np.concatenate(out, axis=0)

    def brain(self) -> np.ndarray:
        """Voxels nonzero in any input channel [*spatial] ("the brain")."""
        x = self.x[0]
        return np.any(x != 0, axis=self.layout.channel_axis(x.ndim, batch=False))


def evaluate(explainer, x: np.ndarray, attribution, target=None, metrics: Sequence[str] | None = None,
             mask: np.ndarray | None = None, region=None, method: str | None = None, params: dict | None = None,
             seed: int = 0, **metric_params) -> dict[str, Any]:
    """Metrics of `attribution` (an `Explanation`, or an array shaped as `explain` returns it) for
    the inputs `x` [N, ...] of `explainer`'s model.

    target: as `explain` takes it (default: the Explanation's targets, else explain's default).
    metrics: names (see `nxrt metrics`); None: every default metric whose needs are met (a mask
    for localisation; the method for metrics that explain again). mask: the truth region on the
    model's spatial grid, [N, *spatial], [*spatial] (every sample) or with a channel axis of size
    1. method / params: the method that made an array attribution (an Explanation carries them).
    metric_params: each metric's parameters, `deletion={"steps": 20}`.

    Returns {metric: value}: a float for one sample, else an array with one value per sample;
    curves as `{metric}_curve` (the score at each step, the unperturbed one first). NaN where a
    metric is undefined for a sample (an empty mask), never an exception for that.
    """
    from ..explainer import resolve_target
    from ..explanation import Explanation

    x = explainer.check_input(x)
    n = x.shape[0]
    targets = None
    if isinstance(attribution, Explanation):
        method = method or attribution.method
        params = attribution.params if params is None else params
        targets = attribution.targets if target is None else None
        a = attribution.attribution
    else:
        a = np.asarray(attribution, dtype=np.float32)
    if a.shape[0] != n:
        raise InputError(f"attribution has {a.shape[0]} sample(s) but x has {n}")
    chosen = _chosen(metrics, mask is not None, method is not None)
    unknown = sorted(set(metric_params) - set(chosen))
    if unknown:
        raise InputError(f"parameters given for {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                         f"not evaluated; evaluated: {', '.join(chosen)}")
    resolved = {m: get_metric(m).resolve_params(metric_params.get(m, {})) for m in chosen}
    layout = explainer.layout
    spatial = tuple(x.shape[ax] for ax in layout.spatial_axes(x.ndim))
    masks = _masks(mask, n, spatial, layout)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        xi = x[i:i + 1]
        ctx = EvaluationContext(explainer, xi, [], region, method, dict(params or {}), rng)
        ctx.target = targets[i] if targets is not None else resolve_target(target, explainer.task, ctx.context, xi)
        row: dict[str, Any] = {}
        for name in chosen:
            metric = get_metric(name)
            with np.errstate(divide="ignore", invalid="ignore"):  # undefined values are NaN, said as NaN
                row.update(metric.score(ctx, a[i:i + 1], None if masks is None else masks[i], **resolved[name]))
        rows.append(row)
    if n == 1:
        return rows[0]
    return {k: np.stack([np.asarray(r[k], dtype=np.float64) for r in rows]) for k in rows[0]}


#: results of EvaluationContext.shared, least recently used first (small arrays: scores)
_SHARED: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SHARED_ENTRIES = 64


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.blake2b(memoryview(a).cast("B"), digest_size=16).hexdigest() + str(a.shape) + str(a.dtype)


def _region_key(region) -> tuple:
    if region is None or isinstance(region, str):
        return (region,)
    if getattr(region, "mask", None) is not None:
        return (region.kind, _digest(region.mask))
    if hasattr(region, "kind"):
        return (region.kind,)
    return ("array", _digest(np.asarray(region)))


def _chosen(metrics: Sequence[str] | None, have_mask: bool, have_method: bool) -> list[str]:
    if metrics is not None:
        names = [get_metric(m).name for m in ([metrics] if isinstance(metrics, str) else metrics)]
        for name in names:
            needs = get_metric(name).needs
            if "mask" in needs and not have_mask:
                raise InputError(f"metric '{name}' compares the map with a truth mask: pass mask= (the CLI reads "
                                 "the case's _seg file, or --mask)")
            if "method" in needs and not have_method:
                raise InputError(f"metric '{name}' explains again: pass the Explanation as attribution, or method=")
        return list(dict.fromkeys(names))
    return default_metrics(have_mask, have_method)


def _masks(mask, n: int, spatial: tuple[int, ...], layout) -> np.ndarray | None:
    """The masks as [n, *spatial] bool, from any of the shapes `evaluate` accepts."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape == spatial:
        return np.broadcast_to(m != 0, (n, *spatial))
    if m.ndim == len(spatial) + 2:  # with a channel axis of size 1
        axis = layout.channel_axis(m.ndim)
        if m.shape[axis] == 1:
            m = np.squeeze(m, axis=axis)
    if m.ndim == len(spatial) + 1 and m.shape[1:] == spatial and m.shape[0] in (1, n):
        return np.broadcast_to(m != 0, (n, *spatial))
    raise InputError(f"mask of shape {list(np.shape(mask))} does not fit the model's spatial grid {list(spatial)} "
                     f"for {n} sample(s); give [N, *spatial], [*spatial] or either with a channel axis of size 1")
