"""Many cases through one model: staging and commit, resume, per-case isolation, progress, exit status.

A `CaseJob` takes one case end to end: it loads the case, explains it (`imaging.pipeline`), and
writes every output (`imaging.outputs`) into a hidden staging folder beside the final one, which
is renamed into place at the end, so a case has all its outputs or none; the case folder is
locked from staging to commit, and what an existing folder already holds is kept or refused by
`case_folder.plan` (resume, added methods, another model). A runner decides where
and in which order jobs run: `LocalRunner` runs them one after another in this process, finishing
each case (figure, last writes, commit) in the background while the next one is explained. Another
runner (a cluster) implements the same `run(job, items, isolate)` and touches nothing else.

`run_cohort` is what `nxrt explain` calls; the CLI only parses options and prints the report.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .case_folder import CaseLock, asked, carry, merged_summary, plan
from .errors import InputError, NxrtError, NxrtWarning, OutputError
from .imaging.outputs import DEFAULT_OUTPUTS, SUMMARY, CaseWriter, Output, kept_display_maps

#: a cohort item: (label shown when the case cannot even be loaded, source for `load_case`)
Item = tuple[str, Any]
#: progress(k, n, case label, method, seconds left or None)
Progress = Callable[[int, int, str, str, float | None], None]


def case_finished(folder: Path) -> bool:
    """A case folder is finished when its summary.json (written last) exists."""
    return (Path(folder) / SUMMARY).exists()


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


#: this machine, as staging folder names carry it (a pid says nothing about another machine's processes)
HOST = _host_tag()
#: this run's part of every staging folder name: the process, a random token and the machine
RUN_TAG = f"{os.getpid()}-{secrets.token_hex(4)}-h{HOST}"


def staging_folder(out_root: Path, name: str) -> Path:
    """The hidden folder a case is written into before its commit: unique per case and per run
    (`.NAME.partial-PID-TOKEN-hHOST`), so two runs never share one, even on one machine."""
    return Path(out_root) / f".{name}.partial-{RUN_TAG}"


def commit(stage: Path, final: Path) -> None:
    """Move a staged case into place (an existing folder is replaced: the caller checked that
    replacing it was asked for). Killed between the two renames, the previous folder survives as
    `.NAME.old-PID-TOKEN-hHOST`, which the next run puts back (`clean_stale`)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{RUN_TAG}")
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-?(?P<pid>\d+)(-[0-9a-f]+)?(-h(?P<host>[0-9a-f]{8}))?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale(out_root: Path, name: str | None = None) -> list[Path]:
    """Remove the staging folders of runs that are gone (a SIGKILL leaves them) and put back a
    case folder a killed commit had moved aside; folders of live runs are left alone.

    A leftover of this machine is gone when its pid is. One written on another machine (a cluster
    worker) cannot be judged by pid here: it is cleaned only with `name` given, by the holder of
    that case's lock -- every writer holds it from staging to commit, so no live run can own it."""
    out_root = Path(out_root)
    handled = []
    if not out_root.is_dir():
        return handled
    if name is None:
        handled.extend(_drop_free_locks(out_root))
    for path in sorted(out_root.iterdir()):
        m = _LEFTOVER.match(path.name)
        if not m or not path.is_dir() or (name is not None and m.group("name") != name):
            continue
        host = m.group("host")
        if host is not None and host != HOST:
            if name is None:
                continue
        elif path.name.endswith(RUN_TAG) or _alive(int(m.group("pid"))):
            continue
        final = out_root / m.group("name")
        if m.group("kind") == "old" and not final.exists():
            os.replace(path, final)  # the commit was killed after moving the old case aside
        else:
            shutil.rmtree(path, ignore_errors=True)
        handled.append(path)
    return handled


def _drop_free_locks(out_root: Path) -> list[Path]:
    """Remove the lock files no live run holds (a killed owner leaves its file; the kernel dropped
    its lock): each is taken and released as any run would, so a held one is never touched."""
    from .case_folder import CaseBusy

    dropped = []
    for path in sorted(out_root.glob(".*.lock")):
        try:
            CaseLock(out_root, path.name[1:-len(".lock")]).acquire().release()
        except (CaseBusy, OutputError):
            continue
        dropped.append(path)
    return dropped


class Interrupted(BaseException):
    """SIGINT / SIGTERM / SIGHUP during a run (raised in the main thread by `stop_on_signals`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.outcomes: list[CaseOutcome] = []


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` in the main thread (once: a second signal
    while the run stops is ignored, so the committing cases finish), and restore the handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), handler) for name in names}
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


@dataclass(frozen=True)
class CaseOutcome:
    """How one case of a cohort ended: status 'ok', 'skipped (finished)' or 'FAILED: <reason>'."""

    name: str
    status: str
    seconds: float = 0.0
    summary: dict | None = None
    recorded_seconds: float | None = None  # a skipped case: what computing it took when it was made

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
    metrics: Sequence[str] | None = None  # evaluate each map ([] = the default metrics; None: no evaluation)
    metric_params: dict = field(default_factory=dict)  # {metric: {param: value}}
    mask: Any = None  # a truth mask file for one case (instead of its _seg)


class CaseJob:
    """One case end to end. `start(source, progress)` loads and explains it on the caller's
    thread and returns `finish`, which writes what is left and commits the case (a runner may
    call it on another thread). NxrtErrors are raised to the runner."""

    def __init__(self, explainer, out: Path, request: CaseRequest):
        self.explainer = explainer
        self.out = Path(out)
        self.request = request
        #: what the finished cases this job skipped (--resume) took when they were made: a resumed
        #: cohort's first time-left estimate
        self.recorded: list[float] = []

    def start(self, source, progress: Callable[[str], None] | None = None) -> Callable[[], CaseOutcome]:
        from .imaging.cases import forget_prefetched, load_case

        t0 = time.perf_counter()
        req = self.request
        try:
            case = load_case(source, channels=self.explainer.card.channels, channel_files=req.channel_files or None)
        finally:
            forget_prefetched()
        if req.mask is not None:  # the true tumour from --mask
            from .region import check_on_case, read_region_mask

            given = read_region_mask(req.mask, label=f"--mask {req.mask}")
            check_on_case(given, case)
            case.seg = (given.mask != 0).astype(np.uint8)
            case.seg_source = str(req.mask)
        return self.explain(case, progress, time.perf_counter() - t0, t0)

    def explain(self, case, progress=None, load_seconds: float = 0.0, t0: float | None = None):
        """The part of `start` after loading (for callers that hold a loaded case). The case
        folder is locked from here to the commit (case_folder.CaseLock)."""
        t0 = time.perf_counter() if t0 is None else t0
        lock = CaseLock(self.out, case.name).acquire()
        try:
            return self._explain(case, progress, load_seconds, t0, lock)
        except BaseException:
            lock.release()
            raise

    def _explain(self, case, progress, load_seconds, t0, lock):
        from .imaging.pipeline import explain_case
        from .registry import canonical

        req = self.request
        final = self.out / case.name
        clean_stale(self.out, case.name)  # what a worker killed on this case left (any machine: we hold the lock)
        model = self.explainer.model
        todo = plan(final, canonical(req.methods), req, (model.file_sha256, model.digest))
        if todo.nothing_to_do:
            lock.release()
            recorded = recorded_seconds(todo.previous)
            if recorded is not None:
                self.recorded.append(recorded)
            return lambda: CaseOutcome(case.name, "skipped (finished)", recorded_seconds=recorded)
        stage = staging_folder(self.out, case.name)
        try:
            if stage.exists():
                shutil.rmtree(stage)
            stage.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(final, exc) from exc
        writer = CaseWriter(stage, req.outputs)
        try:
            result = explain_case(self.explainer, case, todo.run, target=req.target, region=req.region,
                                  params=req.params, slice_spec=req.slice_spec, progress=progress, on_ready=writer,
                                  load_seconds=load_seconds, warn=req.warn, resample=req.resample,
                                  metrics=req.metrics, metric_params=req.metric_params)
        except OutputError as exc:
            writer.abort()
            shutil.rmtree(stage, ignore_errors=True)
            raise exc.moved(stage, final) from exc
        except BaseException:
            writer.abort()
            shutil.rmtree(stage, ignore_errors=True)
            raise
        how = asked(req.target, req.region, req.slice_spec, req.resample, req.metrics, req.metric_params)
        for entry in result.summary.get("methods", {}).values():
            entry["asked"] = how
        if todo.keep:
            result.summary = merged_summary(result.summary, todo)
            result.kept_maps = kept_display_maps(final, todo.keep)

        def finish() -> CaseOutcome:
            try:
                summary = writer.finish(result)
                if todo.keep:
                    carry(final, stage)
                commit(stage, final)
                return CaseOutcome(case.name, "ok", time.perf_counter() - t0, summary)
            except OutputError as exc:
                raise exc.moved(stage, final) from exc
            except OSError as exc:  # carrying or committing
                raise OutputError(final, exc) from exc
            finally:
                if stage.exists():
                    shutil.rmtree(stage, ignore_errors=True)
                lock.release()

        return finish


def recorded_seconds(summary: dict | None) -> float | None:
    """What computing a finished case took, from its summary.json (loading and each method)."""
    if not summary or not summary.get("methods"):
        return None
    timings = summary.get("timings") or {}
    return float(timings.get("load_and_preprocess_s", 0.0)) + float(timings.get("forward_s", 0.0)) + \
        sum(float(m.get("seconds", 0.0)) for m in summary["methods"].values())


class TimeLeft:
    """The time-left estimate of a cohort: the mean time of the cases this run computed (skipped
    ones cost nothing), or before the first one, what the finished cases recorded (a resumed run
    thus starts from the model's measured per-case time, not from zero). `parallel`: cases
    computed at once."""

    def __init__(self, parallel: int = 1):
        self.parallel = max(1, parallel)
        self.spent = 0.0
        self.computed = 0

    def add(self, seconds: float) -> None:
        self.spent += seconds
        self.computed += 1

    def seconds(self, remaining: int, recorded: Sequence[float] = ()) -> float | None:
        if self.computed:
            per_case = self.spent / self.computed
        elif recorded:
            per_case = sum(recorded) / len(recorded)
        else:
            return None
        return per_case * remaining / self.parallel


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

        full: list[OutputError] = []  # a full disk stops the cohort: every later case would fail too
        estimate = TimeLeft()

        def failed(name: str, exc: NxrtError, t0: float) -> CaseOutcome:
            if isinstance(exc, OutputError) and exc.disk_full:
                full.append(exc)
            return CaseOutcome(name, f"FAILED: {exc}", time.perf_counter() - t0)

        def settle(limit: int) -> None:
            while len(waiting) > limit:
                index, name, future, t0 = waiting.pop(0)
                try:
                    outcomes[index] = future.result()
                except NxrtError as exc:
                    outcomes[index] = failed(name, exc, t0)

        try:
            for k, (label, source) in enumerate(items, 1):
                t0 = time.perf_counter()
                if full:
                    outcomes.append(CaseOutcome(Path(str(label)).name, "not started (no space left on the device)"))
                    continue

                def report(method, k=k, label=label):
                    if progress:
                        left = estimate.seconds(len(items) - k + 1, job.recorded)
                        progress(k, len(items), Path(str(label)).name, method, left)

                submitted = False
                try:
                    skipped = len(job.recorded)
                    finish = job.start(source, report)
                    if len(job.recorded) == skipped:  # (a skipped case costs nothing: not counted)
                        estimate.add(time.perf_counter() - t0)
                    if finisher is None:
                        outcomes.append(finish())
                    else:
                        outcomes.append(None)
                        waiting.append((len(outcomes) - 1, Path(str(label)).name, finisher.submit(finish), t0))
                        submitted = True
                        settle(self.overlap)
                except NxrtError as exc:
                    if not isolate:
                        raise
                    outcomes.append(failed(Path(str(label)).name, exc, t0))
                except Interrupted as stop:
                    # the cases already explained finish and commit; this one's staging is gone
                    settle(0)
                    name = signal.Signals(stop.signum).name
                    if not submitted:
                        outcomes.append(CaseOutcome(Path(str(label)).name, f"stopped ({name})"))
                    outcomes.extend(CaseOutcome(Path(str(lb)).name, "not started") for lb, _ in items[k:])
                    stop.outcomes = [o for o in outcomes if o is not None]
                    raise
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
    signal: int | None = None  # the signal that stopped the run, if one did

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def not_done(self) -> list[CaseOutcome]:
        """Cases that failed, were stopped or never started."""
        return [o for o in self.outcomes if not (o.status == "ok" or o.status.startswith("skipped"))]

    @property
    def exit_code(self) -> int:
        """128 + the signal when one stopped the run (130 SIGINT, 143 SIGTERM, 129 SIGHUP); else 0
        when every case is done or skipped, else the number of cases not done (at most 100)."""
        if self.signal is not None:
            return 128 + self.signal
        return min(len(self.not_done), 100)

    def lines(self) -> list[str]:
        width = max((len(o.name) for o in self.outcomes), default=0)
        rows = [f"{o.name:<{width}}  {o.status}" + (f"  ({o.seconds:.1f} s)" if o.status == "ok" else "")
                for o in self.outcomes]
        done = len(self.outcomes) - len(self.not_done)
        tail = f"{done} of {len(self.outcomes)} case(s) done; outputs in {self.out}/"
        if self.signal is not None:
            tail += f" (stopped by {signal.Signals(self.signal).name}; --resume finishes the rest)"
        elif any(o.status.startswith("not started") for o in self.outcomes):
            tail += " (stopped; --resume finishes the rest)"
        return rows + [tail]


def check_distinct(items: Sequence[Item], channel_files: dict | None = None) -> None:
    """Refuse, before any work, cases that would be written to the same output folder (two
    `scan.nii.gz` in different folders, one BraTS ID twice): one line naming both inputs."""
    from .imaging.cases import case_name, strip_nifti

    seen: dict[str, str] = {}
    for label, source in items:
        if source is None:
            name = strip_nifti(Path(next(iter((channel_files or {}).values()), "case")).name)
        else:
            name = case_name(source)
        if name in seen:
            raise InputError(f"{seen[name]} and {label} are both case '{name}' and would share the output folder "
                             f"{name}/; give them distinct file or folder names, or run them into different -o")
        seen[name] = str(label)


def run_cohort(explainer, items: Sequence[Item], out: Path, request: CaseRequest, runner: Runner | None = None,
               progress: Progress | None = None) -> CohortReport:
    """Every item (label, source) through `explainer` into `out`; one case raises its error, a
    cohort isolates each case's (see LocalRunner). Cases that would share an output folder are
    refused first."""
    check_distinct(items, request.channel_files)
    clean_stale(out)
    runner = runner or LocalRunner()
    job = CaseJob(explainer, out, request)
    with stop_on_signals():
        try:
            return CohortReport(runner.run(job, items, isolate=len(items) > 1, progress=progress), Path(out))
        except Interrupted as stop:
            outcomes = stop.outcomes or [CaseOutcome(Path(str(label)).name, "stopped") for label, _ in items]
            return CohortReport(outcomes, Path(out), stop.signum)


def run(explainer, cases: Sequence, out: str | os.PathLike, methods: Sequence[str] = ("vanilla", "gradcam"),
        runner: Runner | None = None, progress: Progress | None = None, **options) -> CohortReport:
    """Explain every case into `out` as `nxrt explain` does: the Python form of a cohort run.

    explainer: an Explainer, or a model path. cases: NIfTI files, BraTS case folders or prefixes.
    runner: LocalRunner() (default) or e.g. nxrt.cohort_ray.RayRunner("auto"). options: the other
    CaseRequest fields (target, region, params, overwrite, resume, metrics, metric_params, ...).
    A cohort also gets index.html, and with metrics metrics.csv / .md / .png (`write_cohort_pages`).
    Returns the CohortReport (outcome per case; `exit_code` as the CLI's)."""
    from .explainer import Explainer
    from .registry import canonical

    ex = explainer if isinstance(explainer, Explainer) else Explainer(explainer)
    request = CaseRequest(canonical(list(methods)), **options)
    items = [(str(c), str(c)) for c in cases]
    report = run_cohort(ex, items, Path(out), request, runner=runner, progress=progress)
    if len(items) > 1:
        write_cohort_pages(Path(out), request, report)
    return report


def write_cohort_pages(out: Path, request: CaseRequest, report: CohortReport) -> list[Path]:
    """What a cohort gets besides its cases: metrics.csv / .md / .png when it was evaluated, and
    index.html (a row per case with its status, linking to its report.html) when the cases have
    reports and at least one case folder exists. Not after a run a signal stopped (it ends at once;
    --resume writes them). The index is a convenience: failing to write it (a full disk) is said as
    a warning and never turns the cohort's outcome into an error."""
    from .imaging.outputs import ReportPage

    names = [o.name for o in report.outcomes]
    written: list[Path] = []
    if report.signal is not None:
        return written
    if request.metrics is not None:
        from .evaluation.tables import write_cohort_metrics

        written += write_cohort_metrics(out, names)
    if any(isinstance(o, ReportPage) for o in request.outputs) and any((out / n).is_dir() for n in names):
        from .report import cohort_page

        try:
            written.append(cohort_page.write(out, report.outcomes))
        except OutputError as exc:
            say = request.warn or (lambda line: warnings.warn(line, NxrtWarning, stacklevel=3))
            say(f"index.html not written: {exc}")
    return written

