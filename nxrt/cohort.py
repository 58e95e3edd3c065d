"""Many cases through one model: staging and commit, resume, per-case isolation, progress, exit status.

A `CaseJob` takes one case end to end: it loads the case, explains it (`imaging.pipeline`), and
writes every output (`imaging.outputs`) into a hidden staging folder beside the final one, which
is renamed into place at the end, so a case has all its outputs or none. A runner decides where
and in which order jobs run: `LocalRunner` runs them one after another in this process, finishing
each case (figure, last writes, commit) in the background while the next one is explained. Another
runner (a cluster) implements the same `run(job, items, isolate)` and touches nothing else.

`run_cohort` is what `nxrt explain` calls; the CLI only parses options and prints the report.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import InputError, NxrtError
from .imaging.outputs import DEFAULT_OUTPUTS, SUMMARY, CaseWriter, Output

#: a cohort item: (label shown when the case cannot even be loaded, source for `load_case`)
Item = tuple[str, Any]
#: progress(k, n, case label, method, seconds left or None)
Progress = Callable[[int, int, str, str, float | None], None]


def case_finished(folder: Path) -> bool:
    """A case folder is finished when its summary.json (written last) exists."""
    return (Path(folder) / SUMMARY).exists()


def staging_folder(out_root: Path, name: str) -> Path:
    """The hidden folder a case is written into before its commit (one per process)."""
    return Path(out_root) / f".{name}.partial{os.getpid()}"


def commit(stage: Path, final: Path) -> None:
    """Move a staged case into place (an existing folder is replaced: the caller checked that
    replacing it was asked for)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class CaseOutcome:
    """How one case of a cohort ended: status 'ok', 'skipped (finished)' or 'FAILED: <reason>'."""

    name: str
    status: str
    seconds: float = 0.0
    summary: dict | None = None

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")


@dataclass
class CaseRequest:
    """What to do with each case (everything but the model and the case itself)."""

    methods: Sequence[str]
    target: Any = None
    region: Any = None
    params: dict = field(default_factory=dict)
    slice_spec: str | None = None
    resample: bool | None = None  # None: the card's nxrt.grid
    overwrite: bool = False
    resume: bool = False
    channel_files: dict | None = None
    outputs: Sequence[Output] = DEFAULT_OUTPUTS
    warn: Callable[[str], None] | None = None  # told every warning of a result, one line each


class CaseJob:
    """One case end to end. `start(source, progress)` loads and explains it on the caller's
    thread and returns `finish`, which writes what is left and commits the case (a runner may
    call it on another thread). NxrtErrors are raised to the runner."""

    def __init__(self, explainer, out: Path, request: CaseRequest):
        self.explainer = explainer
        self.out = Path(out)
        self.request = request

    def start(self, source, progress: Callable[[str], None] | None = None) -> Callable[[], CaseOutcome]:
        from .imaging.cases import forget_prefetched, load_case

        t0 = time.perf_counter()
        req = self.request
        try:
            case = load_case(source, channels=self.explainer.card.channels, channel_files=req.channel_files or None)
        finally:
            forget_prefetched()
        load_seconds = time.perf_counter() - t0
        final = self.out / case.name
        if req.resume and case_finished(final):
            return lambda: CaseOutcome(case.name, "skipped (finished)")
        return self.explain(case, progress, load_seconds, t0)

    def explain(self, case, progress=None, load_seconds: float = 0.0, t0: float | None = None):
        """The part of `start` after loading (for callers that hold a loaded case)."""
        from .imaging.pipeline import explain_case

        t0 = time.perf_counter() if t0 is None else t0
        req = self.request
        final = self.out / case.name
        if final.exists() and not (req.overwrite or req.resume):  # (--resume: an unfinished case is redone)
            raise InputError(f"{final} exists; pass --overwrite to replace it or --resume to skip finished cases")
        stage = staging_folder(self.out, case.name)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        writer = CaseWriter(stage, req.outputs)
        try:
            result = explain_case(self.explainer, case, req.methods, target=req.target, region=req.region,
                                  params=req.params, slice_spec=req.slice_spec, progress=progress, on_ready=writer,
                                  load_seconds=load_seconds, warn=req.warn, resample=req.resample)
        except BaseException:
            writer.abort()
            shutil.rmtree(stage, ignore_errors=True)
            raise

        def finish() -> CaseOutcome:
            try:
                summary = writer.finish(result)
                commit(stage, final)
                return CaseOutcome(case.name, "ok", time.perf_counter() - t0, summary)
            finally:
                if stage.exists():
                    shutil.rmtree(stage, ignore_errors=True)

        return finish


class Runner(Protocol):
    def run(self, job: CaseJob, items: Sequence[Item], isolate: bool, progress: Progress | None = None
            ) -> list[CaseOutcome]: ...


class LocalRunner:
    """Cases one after another in this process. With isolate=True (a cohort) a case's error is its
    outcome and the others go on, and each case's figure, last writes and commit run on a
    background thread while the next case is explained (at most `overlap` cases wait there, so
    memory stays bounded). With isolate=False (one case) errors are raised and nothing overlaps."""

    def __init__(self, overlap: int = 2):
        self.overlap = overlap

    def run(self, job: CaseJob, items: Sequence[Item], isolate: bool, progress: Progress | None = None
            ) -> list[CaseOutcome]:
        outcomes: list[CaseOutcome | None] = []
        finisher = ThreadPoolExecutor(1, thread_name_prefix="nxrt-finish") if isolate else None
        waiting: list[tuple[int, str, Future, float]] = []
        started = time.perf_counter()

        def settle(limit: int) -> None:
            while len(waiting) > limit:
                index, name, future, t0 = waiting.pop(0)
                try:
                    outcomes[index] = future.result()
                except NxrtError as exc:
                    outcomes[index] = CaseOutcome(name, f"FAILED: {exc}", time.perf_counter() - t0)

        try:
            for k, (label, source) in enumerate(items, 1):
                t0 = time.perf_counter()

                def report(method, k=k, label=label):
                    if progress:
                        elapsed = time.perf_counter() - started
                        left = elapsed / max(k - 1, 1) * (len(items) - k + 1) if k > 1 else None
                        progress(k, len(items), Path(str(label)).name, method, left)

                try:
                    finish = job.start(source, report)
                    if finisher is None:
                        outcomes.append(finish())
                    else:
                        outcomes.append(None)
                        waiting.append((len(outcomes) - 1, Path(str(label)).name, finisher.submit(finish), t0))
                        settle(self.overlap)
                except NxrtError as exc:
                    if not isolate:
                        raise
                    outcomes.append(CaseOutcome(Path(str(label)).name, f"FAILED: {exc}", time.perf_counter() - t0))
            settle(0)
        finally:
            if finisher is not None:
                finisher.shutdown(wait=True)
        return [o for o in outcomes if o is not None]


@dataclass
class CohortReport:
    """The outcome of every case, in order, and where the outputs are."""

    outcomes: list[CaseOutcome]
    out: Path

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def exit_code(self) -> int:
        """0 when every case is done or skipped, else the number of failed cases (at most 100)."""
        return min(len(self.failed), 100)

    def lines(self) -> list[str]:
        width = max((len(o.name) for o in self.outcomes), default=0)
        rows = [f"{o.name:<{width}}  {o.status}" + (f"  ({o.seconds:.1f} s)" if o.status == "ok" else "")
                for o in self.outcomes]
        done = len(self.outcomes) - len(self.failed)
        return rows + [f"{done} of {len(self.outcomes)} case(s) done; outputs in {self.out}/"]


def run_cohort(explainer, items: Sequence[Item], out: Path, request: CaseRequest, runner: Runner | None = None,
               progress: Progress | None = None) -> CohortReport:
    """Every item (label, source) through `explainer` into `out`; one case raises its error, a
    cohort isolates each case's (see LocalRunner)."""
    runner = runner or LocalRunner()
    job = CaseJob(explainer, out, request)
    return CohortReport(runner.run(job, items, isolate=len(items) > 1, progress=progress), Path(out))
