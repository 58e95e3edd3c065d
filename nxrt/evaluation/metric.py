"""Metric plugins: the `Metric` base class, discovery through the `nxrt.metrics` entry points, and
the map preparations every metric shares.

Built-in metrics live in `plugins/metrics_*.py` and register the way a third-party one does:

    [project.entry-points."nxrt.metrics"]
    my_metric = "my_package.module:MyMetric"

A metric declares its parameters (`parameters = (Param(...), ...)`, see nxrt.params) with the names
and defaults of Quantus 0.6 where Quantus has the metric, says what it needs (`needs`: "mask",
"model", "method") and implements `score(ctx, a, mask, **params)` for one sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..params import Param, resolve

GROUP = "nxrt.metrics"
#: what a metric can need besides the attribution
NEEDS = ("mask", "model", "method")


class Metric:
    """Base class of a metric of explanations.

    Subclasses set `name`, a one-line `summary`, `family` (localisation, faithfulness,
    randomisation, complexity, robustness, axiomatic), `parameters`, `needs` (a subset of NEEDS)
    and implement `score(ctx, a, mask, **params)`: `a` is one sample's attribution as `explain`
    returned it ([1, ...] in the model's layout; CAM methods: channel axis of size 1), `mask` the
    sample's truth mask on the model's spatial grid (bool, or None), `ctx` an `EvaluationContext`.
    It returns {name: float} plus any curves ({name}_curve: 1-D array); NaN where the metric is
    undefined for this sample (an empty mask, a zero map), never an exception for that.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = ""
    parameters: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    #: run by `evaluate(metrics=None)` (the costly re-explaining metrics are not: ask for them)
    default: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = [p.name for p in cls.parameters]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}: parameter names repeat: {names}")
        unknown = set(cls.needs) - set(NEEDS)
        if unknown:
            raise TypeError(f"{cls.__name__}: needs {sorted(unknown)} are not among {NEEDS}")
        cls.defaults = {p.name: p.default for p in cls.parameters}

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value (given ones checked, the rest defaults); one-line errors."""
        return resolve(self.parameters, given, self.name, kind="metric")

    def score(self, ctx, a: np.ndarray, mask: np.ndarray | None, **params) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


_cache: dict[str, type[Metric]] | None = None


def _load() -> dict[str, type[Metric]]:
    global _cache
    if _cache is None:
        from ..registry import discover

        _cache = discover(GROUP, Metric, "metric")
    return _cache


def refresh() -> None:
    global _cache
    _cache = None


def metrics() -> list[str]:
    """Names of every registered metric (built-ins and third-party plugins)."""
    return sorted(_load())


def metric_classes() -> dict[str, type[Metric]]:
    return dict(_load())


def default_metrics(have_mask: bool, have_method: bool) -> list[str]:
    """The metrics `evaluate(metrics=None)` runs: every one marked default whose needs are met."""
    return [name for name, cls in sorted(_load().items()) if cls.default
            and ("mask" not in cls.needs or have_mask) and ("method" not in cls.needs or have_method)]


def get_metric(name: str) -> Metric:
    """A metric by name; an InputError lists the known names otherwise."""
    table = _load()
    key = name.strip().lower()
    if key not in table:
        raise InputError(f"unknown metric '{name}'; known metrics: {', '.join(metrics())}")
    return table[key]()


# ---------------------------------------------------------------------------- shared preparations


def prepared(a: np.ndarray, abs: bool = False, normalise: bool = True) -> np.ndarray:
    """Quantus' order: normalise (divide by the largest |value|; an all-zero map stays zero), then
    take |a|. float64. Quantus 0.6 divides by the largest value of the whole batch it is given; nxrt
    by each sample's own: every metric here is invariant to a positive factor per sample, so the
    two agree (sparseness up to its 1e-7 offset)."""
    a = np.asarray(a, dtype=np.float64)
    if normalise:
        top = float(np.max(np.abs(a))) if a.size else 0.0
        if top > 0:
            a = a / top
    if abs:
        a = np.abs(a)
    return a


def spatial_map(ctx, a: np.ndarray) -> np.ndarray:
    """One sample's attribution summed over its channel axis: the one-channel map [*spatial] that
    localisation metrics compare with the mask (float64)."""
    a = np.asarray(a, dtype=np.float64)
    return a.sum(axis=ctx.layout.channel_axis(a.ndim))[0]


def split_cli_params(assignments) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The CLI's `-p NAME.PARAM=VALUE` texts split into those for methods (returned as they are)
    and {metric: {param: value}} for the metrics named (text converted by the parameter's kind)."""
    table = _load()
    rest: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    for text in assignments:
        target, eq, value = text.partition("=")
        name, dot, param = target.partition(".")
        if eq and dot and name.strip().lower() in table:
            cls = table[name.strip().lower()]
            known = {p.name: p for p in cls.parameters}
            if param.strip() not in known:
                raise InputError(f"-p {text}: metric '{cls.name}' has no parameter '{param.strip()}'; its "
                                 f"parameters: {', '.join(sorted(known)) or 'none'}")
            out.setdefault(cls.name, {})[param.strip()] = known[param.strip()].parse(value, cls.name)
        else:
            rest.append(text)
    return rest, out
