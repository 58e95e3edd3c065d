"""Method plugins: the `Method` base class and discovery through the `nxrt.methods` entry points.

Built-in methods live in `plugins/` (installed as `nxrt.plugins`) and register through the same
entry-point group a third-party distribution uses:

    [project.entry-points."nxrt.methods"]
    my_method = "my_package.module:MyMethod"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from .errors import InputError

GROUP = "nxrt.methods"


class Method:
    """Base class of an explanation method.

    Subclasses set `name`, optional `aliases`, a one-line `summary`, `defaults` (parameter ->
    default value) and implement `explain(ctx, x, target, **params)`, returning a float32 array
    shaped like `x` (CAM-style methods: the channel axis of size 1). `x` is one or more samples
    in the model's layout; `target` is already resolved (an int or a list of ints, summed).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated by `given`; unknown names are an InputError listing the known ones."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise InputError(f"method '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                             f"its parameters: {known}")
        out = dict(self.defaults)
        out.update(given)
        return out

    def explain(self, ctx, x: np.ndarray, target, **params) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


_cache: dict[str, type[Method]] | None = None


def _load() -> dict[str, type[Method]]:
    global _cache
    if _cache is None:
        found: dict[str, type[Method]] = {}
        for ep in entry_points(group=GROUP):
            try:
                cls = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the others
                import warnings

                warnings.warn(f"nxrt: could not load method plugin '{ep.name}' ({ep.value}): {exc}", stacklevel=2)
                continue
            if isinstance(cls, type) and issubclass(cls, Method):
                found[cls.name or ep.name] = cls
        _cache = found
    return _cache


def refresh() -> None:
    """Forget the discovered plugins (after installing a new one in a running process)."""
    global _cache
    _cache = None


def methods() -> list[str]:
    """Names of every registered method (built-ins and third-party plugins)."""
    return sorted(_load())


def method_classes() -> dict[str, type[Method]]:
    return dict(_load())


def get_method(name: str) -> Method:
    """Instantiate a method by name or alias; an InputError lists the known names otherwise."""
    table = _load()
    key = name.strip().lower()
    if key in table:
        return table[key]()
    for cls in table.values():
        if key in cls.aliases:
            return cls()
    raise InputError(f"unknown method '{name}'; known methods: {', '.join(methods())}")
