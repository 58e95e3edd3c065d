"""One output case folder against what a run asks of it: who owns it, what to compute, what to keep.

The rules (README, "Cohorts: what is guaranteed"):

- **Ownership.** From staging to commit a case folder belongs to one run: an advisory lock
  (`fcntl.flock`) on `OUT/.NAME.lock`. The kernel drops it when the process ends, however it
  ends, so a killed run never blocks the next one. A second run that reaches a case another run
  holds fails that case with one line (it does not wait: `--resume` later finishes it).
- **Another model.** A finished folder (one with summary.json) made by another model file
  (sha256), or on another grid or slice, is replaced only with `--overwrite`.
- **Methods it already has.** Requested again: `--resume` keeps one that was asked the same way
  (every parameter, the target and the region) and fails the case in one line when it was asked
  otherwise; `--overwrite` computes it again; with neither the case fails in one line.
- **Every other method it has is kept**: its files go into the new folder (hard links, so nothing
  is copied), its summary entry is merged in and the overview figure is drawn again with it.

`plan` reads the folder and the request and returns a `Plan`; `carry` and `merged_summary` do the
keeping; cohort.CaseJob holds the lock around all of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

SUMMARY = "summary.json"


class CaseBusy(InputError):
    """The case folder is held by another live run."""


class CaseLock:
    """The advisory lock on one output case folder: `OUT/.NAME.lock`, holding the owner's pid,
    removed at release (a SIGKILLed owner leaves it behind: harmless, the next run takes it)."""

    def __init__(self, out_root: Path, name: str):
        self.folder = Path(out_root) / name
        self.path = Path(out_root) / f".{name}.lock"
        self._fd: int | None = None

    def acquire(self) -> CaseLock:
        import fcntl

        from .errors import OutputError

        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(self.folder, exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise CaseBusy(f"{self.folder} is being written by another nxrt run (pid {owner}); run again "
                               "with --resume once it has finished, or write to another -o") from None
            try:  # the file may have been removed by its last owner after we opened it: take the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        with contextlib.suppress(OSError):  # the pid is for the message only (a full disk may refuse it)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still held: a run waiting on this inode sees it gone
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class Plan:
    """What one run does to one case folder."""

    run: list[str]  # the methods to compute
    keep: list[str] = field(default_factory=list)  # methods of the existing folder carried over
    previous: dict | None = None  # the existing folder's summary (None: nothing is kept)

    @property
    def nothing_to_do(self) -> bool:
        return not self.run


def asked(target, region, slice_spec, resample, metrics=None, metric_params=None) -> dict:
    """How a method was asked for, as summary.json records it beside the method (`asked`): what
    resume compares besides the parameters (the metrics asked of it included)."""
    return {"target": plain(target), "region": plain(region), "slice": slice_spec,
            "grid": None if resample is None else ("resample" if resample else "crop"),
            "metrics": None if metrics is None else {"names": sorted(metrics), "params": plain(metric_params or {})}}


def read_summary(folder: Path) -> dict | None:
    path = Path(folder) / SUMMARY
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read ({exc}); pass --overwrite to replace the case") from None


def plan(final: Path, methods: list[str], request, model_identity: tuple[str | None, str]) -> Plan:
    """What to compute for the case folder `final` (see the module docstring); one-line errors.
    model_identity: (the model file's sha256 or None, the model content's digest)."""
    final = Path(final)
    if not final.exists():
        return Plan(list(methods))
    previous = read_summary(final)
    if previous is None:  # not a finished nxrt case (an earlier version's, or someone else's)
        if request.overwrite or request.resume:
            return Plan(list(methods))
        raise InputError(f"{final} exists; pass --overwrite to replace it or --resume to skip finished cases")
    other = _other_case(previous, model_identity, request)
    if other:
        if request.overwrite:
            return Plan(list(methods))
        raise InputError(f"{final} was made {other}; write to another -o, or pass --overwrite to replace it")
    have = previous.get("methods", {})
    run = []
    for method in methods:
        if method not in have or request.overwrite:
            run.append(method)
            continue
        if not request.resume:
            raise InputError(f"{final} already has {method}; pass --overwrite to compute it again, or --resume "
                             "to keep it")
        differs = _asked_otherwise(have[method], method, request)
        if differs:
            raise InputError(f"{final} has {method} {differs}; pass --overwrite to replace it, or write to "
                             "another -o")
    keep = [m for m in have if m not in run]
    return Plan(run, keep, previous)


def _other_case(previous: dict, model_identity: tuple, request) -> str | None:
    """Why a finished case cannot take more methods from this run (another model, grid or slice)."""
    model = (previous.get("provenance") or {}).get("model") or {}
    sha256, digest = model_identity
    same = model.get("sha256") == sha256 if sha256 and model.get("sha256") else \
        model.get("content_digest") == digest  # a model given in memory has no file to hash
    if not same:
        return f"by another model ({model.get('path') or 'in memory'}, sha256 {str(model.get('sha256'))[:12]})"
    entries = list(previous.get("methods", {}).values())
    if entries:
        was = entries[0].get("asked") or {}
        now = asked(None, None, request.slice_spec, request.resample)
        for key in ("slice", "grid"):
            if was.get(key) != now[key]:
                return f"with {key} {was.get(key)!r} (this run asks {now[key]!r})"
    return None


def _asked_otherwise(entry: dict, method: str, request) -> str | None:
    """How an existing method entry differs from this request (None: asked the same way)."""
    from .registry import get_method

    was = entry.get("asked")
    if was is None:
        return "recorded by an older nxrt (it does not say how it was asked)"
    now = asked(request.target, request.region, request.slice_spec, request.resample,
                getattr(request, "metrics", None), getattr(request, "metric_params", None))
    for key in ("target", "region", "metrics"):
        if was.get(key) != now[key]:
            return f"for {key} {was.get(key)!r} (this run asks {now[key]!r})"
    wanted = get_method(method).resolve_params(request.params.get(method, {}))
    recorded = entry.get("params", {})
    for name, value in wanted.items():
        if value is None:  # the method decides (e.g. Grad-CAM's layer): the same model decides the same
            continue
        if name not in recorded or recorded[name] != plain(value):
            return f"with {name}={recorded.get(name)!r} (this run asks {plain(value)!r})"
    return None


def merged_summary(summary: dict, plan: Plan) -> dict:
    """The new run's summary with the kept methods' entries merged in (the folder's earlier order,
    then the new methods) and the earlier runs' provenance listed under provenance.earlier_runs."""
    if plan.previous is None or not plan.keep:
        return summary
    old = plan.previous.get("methods", {})
    new = summary.get("methods", {})
    methods = {m: (new[m] if m in new else old[m]) for m in old if m in new or m in plan.keep}
    methods.update({m: e for m, e in new.items() if m not in methods})
    merged = {**summary, "methods": methods}
    before = dict(plan.previous.get("provenance") or {})
    earlier = before.pop("earlier_runs", [])
    if "provenance" in merged:
        merged["provenance"] = {**merged["provenance"], "earlier_runs": [*earlier, before]}
    return merged


def carry(old: Path, stage: Path) -> list[str]:
    """Put every file of the existing case folder `old` that the new one does not have into
    `stage` (a hard link; a copy where the file system has none). Returns their names."""
    carried = []
    for path in sorted(Path(old).iterdir()):
        target = Path(stage) / path.name
        if not path.is_file() or target.exists():
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        carried.append(path.name)
    return carried


def plain(value):
    """A JSON value for a parameter, target or region as asked (arrays: shape and a digest)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    data = getattr(value, "mask", value)  # a region.RegionMask: its mask
    if isinstance(data, np.ndarray):
        if data.size <= 16:
            return data.tolist()
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]
        return f"array{list(data.shape)}:{digest}"
    return str(value)
