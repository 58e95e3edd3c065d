"""Method plugins: the `Method` base class and discovery through the `nxrt.methods` entry points.

Built-in methods live in `plugins/` (installed as `nxrt.plugins`) and register through the same
entry-point group a third-party distribution uses:

    [project.entry-points."nxrt.methods"]
    my_method = "my_package.module:MyMethod"

A method declares its parameters (`parameters = (Param(...), ...)`, see nxrt.params); nxrt
validates every value before `explain` runs, lists them in `nxrt methods`, and sets them from the
CLI with `-p METHOD.PARAM=VALUE`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from .errors import InputError
from .params import Param, ParamError, resolve

GROUP = "nxrt.methods"


@dataclass
class MethodResult:
    """What a method may return instead of a bare array: the attribution plus method-specific
    extras (Grad-CAM's resolved layer, IG's convergence delta, ...), which reach the caller in
    `Explanation.extras`, and warnings (one line each) for `Explanation.warnings`."""

    attribution: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def attribution_of(result) -> np.ndarray:
    """The attribution of what a method's `explain` returned (an array or a MethodResult)."""
    return np.asarray(result.attribution if isinstance(result, MethodResult) else result, dtype=np.float32)


class Method:
    """Base class of an explanation method.

    Subclasses set `name`, optional `aliases`, a one-line `summary` and `parameters` (a tuple of
    `nxrt.Param`), and implement `explain(ctx, x, target, **params)`, returning a float32 array
    shaped like `x` (CAM-style methods: the channel axis of size 1) or a `MethodResult`. `x` is one
    or more samples in the model's layout; `target` is already resolved (a list of ints, summed);
    every parameter arrives checked, with its default filled in.

    `defaults = {name: value}` (the form before typed parameters) still works for one release,
    with a DeprecationWarning: each entry becomes a Param whose kind is its default's type.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    parameters: ClassVar[tuple[Param, ...]] = ()
    #: True when `explain` takes a stack of samples with one target and treats each on its own
    #: (one gradient pass for all): metrics that explain many perturbed copies then batch them
    stacks_samples: ClassVar[bool] = False
    #: {name: default} of `parameters` (derived; read-only by convention)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "defaults" in own and "parameters" not in own:
            warnings.warn(f"{cls.__module__}.{cls.__name__}: `defaults = {{...}}` is deprecated; declare "
                          "`parameters = (nxrt.Param(name, kind, default, help), ...)`", DeprecationWarning,
                          stacklevel=2)
            cls.parameters = tuple(Param.inferred(k, v) for k, v in own["defaults"].items())
        names = [p.name for p in cls.parameters]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}: parameter names repeat: {names}")
        cls.defaults = {p.name: p.default for p in cls.parameters}

    @classmethod
    def param(cls, name: str) -> Param:
        for p in cls.parameters:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in cls.parameters) or "none"
        raise ParamError(f"method '{cls.name}' has no parameter '{name}'; its parameters: {known}")

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value (given ones checked, the rest defaults); one-line errors."""
        return resolve(self.parameters, given, self.name)

    def explain(self, ctx, x: np.ndarray, target, **params):  # pragma: no cover - abstract
        raise NotImplementedError


_cache: dict[str, type[Method]] | None = None


def discover(group: str, base: type, kind: str) -> dict[str, type]:
    """{name: class} of every entry point of `group` that loads a subclass of `base` (a plugin
    that fails to load is a warning naming it: it must not break the others). kind: "method" or
    "metric", for that warning."""
    found: dict[str, type] = {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
        except Exception as exc:
            warnings.warn(f"nxrt: could not load {kind} plugin '{ep.name}' ({ep.value}): {exc}", stacklevel=3)
            continue
        if isinstance(cls, type) and issubclass(cls, base):
            found[cls.name or ep.name] = cls
    return found


def _load() -> dict[str, type[Method]]:
    global _cache
    if _cache is None:
        _cache = discover(GROUP, Method, "method")
    return _cache


def refresh() -> None:
    """Forget the discovered plugins (after installing a new one in a running process)."""
    global _cache
    _cache = None
    from .evaluation import metric

    metric.refresh()


def methods() -> list[str]:
    """Names of every registered method (built-ins and third-party plugins)."""
    return sorted(_load())


def method_classes() -> dict[str, type[Method]]:
    return dict(_load())


def method_class(name: str) -> type[Method]:
    """A method's class by name or alias; an InputError lists the known names otherwise."""
    table = _load()
    key = name.strip().lower()
    if key in table:
        return table[key]
    for cls in table.values():
        if key in cls.aliases:
            return cls
    raise InputError(f"unknown method '{name}'; known methods: {', '.join(methods())}")


def get_method(name: str) -> Method:
    """Instantiate a method by name or alias."""
    return method_class(name)()


def canonical(names: Sequence[str]) -> list[str]:
    """Method names or aliases as canonical names, each once, in order."""
    return list(dict.fromkeys(method_class(n).name for n in names))


def params_from_cli(methods: Sequence[str], shortcuts: Mapping[str, Any], assignments: Sequence[str]) -> dict:
    """{method: {param: value}} for the CLI: `shortcuts` (flag values such as --steps, given to
    every chosen method that has the parameter; None = not given) then the `-p METHOD.PARAM=VALUE`
    assignments (METHOD may be an alias; text converted by the parameter's kind), which win.
    A shortcut no chosen method takes, or an assignment for a method not chosen, is an error: it
    would otherwise be silently ignored."""
    chosen = canonical(methods)
    out: dict[str, dict[str, Any]] = {m: {} for m in chosen}
    for key, value in shortcuts.items():
        if value is None:
            continue
        takers = [m for m in chosen if key in method_class(m).defaults]
        if not takers:
            raise InputError(f"--{key.replace('_', '-')} applies to none of the chosen methods "
                             f"({', '.join(chosen)}); drop it or add a method that has it (see `nxrt methods`)")
        for m in takers:
            out[m][key] = method_class(m).param(key).check(value, m)
    for text in assignments:
        target, eq, value = text.partition("=")
        method, dot, name = target.partition(".")
        if not eq or not dot or not method.strip() or not name.strip():
            raise InputError(f"-p '{text}' must be METHOD.PARAM=VALUE, e.g. -p ig.steps=32")
        cls = method_class(method)
        if cls.name not in out:
            raise InputError(f"-p {text}: method '{cls.name}' is not among the chosen methods "
                             f"({', '.join(chosen)}); add -m {method.strip()}")
        param = cls.param(name.strip())
        out[cls.name][param.name] = param.parse(value, cls.name)
    return out
