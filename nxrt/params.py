"""Typed parameters of methods (and metrics): declared once, validated in one place.

A plugin declares what it takes:

    parameters = (Param("steps", int, 50, "path points", minimum=1),
                  Param("rule", str, "gausslegendre", "quadrature", choices=RULES))

and nxrt checks every value before the plugin runs (Python calls and the CLI alike), shows the
parameters in `nxrt methods`, and lets the CLI set any of them with `-p METHOD.PARAM=VALUE`: the
text is converted by the parameter's kind. Every bad value is one line naming the method, the
parameter, what was given and what is allowed.

Kinds: int, float, bool, str (optionally `choices`), "ints" (an integer or a list of them, e.g. a
patch size per axis), "strs" (a name or a list of names), "array" (a number, or an array: from the
CLI a number or a .npy file), "mapping" (a dict; from the CLI JSON), "any" (unchecked; from the CLI
a JSON literal, else the text itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

KINDS = ("int", "float", "bool", "str", "ints", "strs", "array", "mapping", "any")
_TYPE_KINDS = {int: "int", float: "float", bool: "bool", str: "str", dict: "mapping"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ParamError(InputError):
    """A parameter value that its declaration does not allow (the message says which and why)."""


@dataclass(frozen=True)
class Param:
    """One parameter of a method: name, kind (a Python type or a kind name, see the module
    docstring), default, one-line help, and optional choices / minimum / maximum. optional: None
    is allowed too (it means "the method decides", e.g. Grad-CAM's default layer); a default of
    None makes a parameter optional by itself."""

    name: str
    kind: Any = "any"
    default: Any = None
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False

    def __post_init__(self):
        kind = _TYPE_KINDS.get(self.kind, self.kind)
        if kind not in KINDS:
            raise TypeError(f"Param {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is None:
            object.__setattr__(self, "optional", True)

    @classmethod
    def inferred(cls, name: str, default: Any) -> Param:
        """A parameter declared the old way (`defaults = {name: value}`): its kind from the default."""
        kind = "any"
        if isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int | np.integer):
            kind = "int"
        elif isinstance(default, float | np.floating):
            kind = "float"
        elif isinstance(default, str):
            kind = "str"
        return cls(name, kind, default)

    # ------------------------------------------------------------------ description

    def describe(self) -> str:
        """e.g. 'int >= 1; path points' or 'one of mean, squared, vargrad'."""
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = {"ints": "integer or list of integers", "strs": "name or list of names",
                    "array": "number or array (.npy)", "mapping": "JSON object"}.get(self.kind, self.kind)
            what += _bounds(self.minimum, self.maximum)
        if self.optional and self.kind != "any":
            what += " or none"
        return f"{what}; {self.help}" if self.help else what

    # ------------------------------------------------------------------ values

    def parse(self, text: str, method: str = "") -> Any:
        """The value of a command-line text (`-p METHOD.PARAM=TEXT`), checked."""
        where = f"{method}.{self.name}" if method else self.name
        raw = text.strip()
        if self.optional and raw.lower() in ("none", "null", ""):
            return None
        try:
            value = self._convert(raw)
        except (ValueError, TypeError, OSError) as exc:
            raise ParamError(f"-p {where}={text}: {exc}; expected {self.describe()}") from None
        return self.check(value, method)

    def _convert(self, raw: str) -> Any:
        if self.kind == "int":
            return _int(raw)
        if self.kind == "float":
            return _float(raw)
        if self.kind == "bool":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(f"'{raw}' is not true or false")
        if self.kind == "ints":
            values = [_int(v) for v in raw.replace("x", ",").split(",") if v.strip()]
            return values[0] if len(values) == 1 else values
        if self.kind == "strs":
            names = [v.strip() for v in raw.split(",") if v.strip()]
            return names[0] if len(names) == 1 else names
        if self.kind == "array":
            try:
                return float(raw)
            except ValueError:
                pass
            if raw.endswith(".npy"):
                if not Path(raw).is_file():
                    raise ValueError(f"no such file {raw}")
                return np.load(raw, allow_pickle=False)
            raise ValueError(f"'{raw}' is neither a number nor a .npy file")
        if self.kind == "mapping":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(f"'{raw}' is not a JSON object like {{\"steps\": 8}}")
            return value
        if self.kind == "any":
            try:
                return json.loads(raw)
            except ValueError:
                return raw
        return raw

    def check(self, value: Any, method: str = "") -> Any:
        """`value` as the method receives it, or a ParamError saying what is allowed."""
        if value is None:
            if self.optional:
                return None
            raise self._error(value, "must be given (not None)", method)
        kind = self.kind
        if kind == "any":
            return value
        if kind == "bool":
            if not isinstance(value, bool | np.bool_):
                raise self._error(value, "must be true or false", method)
            return bool(value)
        if kind == "int":
            if not _is_int(value) or not _within(value, self.minimum, self.maximum):
                raise self._error(value, "must be an integer" + _bounds(self.minimum, self.maximum), method)
            value = int(value)
        elif kind == "float":
            if not _is_number(value) or not np.isfinite(value) or not _within(value, self.minimum, self.maximum):
                raise self._error(value, _float_rule(self.minimum, self.maximum), method)
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise self._error(value, "must be a string", method)
        elif kind == "ints":
            items = [value] if _is_int(value) else list(value) if _is_sequence(value) else None
            if not items or not all(_is_int(v) and _within(v, self.minimum, self.maximum) for v in items):
                raise self._error(value, "must be an integer or a list of integers"
                                  + _bounds(self.minimum, self.maximum), method)
            value = int(value) if _is_int(value) else [int(v) for v in items]
        elif kind == "strs":
            items = [value] if isinstance(value, str) else list(value) if _is_sequence(value) else None
            if not items or not all(isinstance(v, str) for v in items):
                raise self._error(value, "must be a name or a list of names", method)
            value = list(items)
        elif kind == "array":
            try:
                value = value if _is_number(value) else np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                raise self._error(value, "must be a number or an array of numbers", method) from None
            if not np.all(np.isfinite(value)):
                raise self._error(value, "must be finite (no NaN/Inf)", method)
        elif kind == "mapping":
            if not isinstance(value, Mapping):
                raise self._error(value, "must be a mapping (a dict; on the command line JSON)", method)
            value = dict(value)
        if self.choices and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ParamError(_prefix(method) + f"{self.name} '{value}' is not one of {allowed}")
        return value

    def _error(self, value, rule: str, method: str) -> ParamError:
        shown = f"array{list(np.shape(value))}" if isinstance(value, np.ndarray) and value.size > 8 else repr(value)
        return ParamError(_prefix(method) + f"{self.name} {rule}, got {shown}")


def resolve(parameters: Sequence[Param], given: Mapping[str, Any], method: str, kind: str = "method"
            ) -> dict[str, Any]:
    """Every parameter's value: the given ones checked, the rest their defaults. Unknown names are
    one error listing the known ones. kind: what `method` names ("method" or "metric")."""
    known = {p.name: p for p in parameters}
    unknown = sorted(set(given) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ParamError(f"{kind} '{method}' has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {listed}")
    return {name: (p.check(given[name], method) if name in given else p.default) for name, p in known.items()}


def _prefix(method: str) -> str:
    return f"{method}: " if method else ""


def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


def _float_rule(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"must lie in [{lo:g}, {hi:g}]"
    return "must be a number" + _bounds(lo, hi)


def _within(value, lo, hi) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
