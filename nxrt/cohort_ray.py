"""Cohorts on a Ray cluster: `RayRunner`, the runner behind `nxrt explain --ray [ADDRESS]`.

The driver (the `nxrt` process) sends case paths, never arrays: each worker is a Ray actor that
builds one Explainer from the driver's recipe (`Explainer.recipe`: the model's path, or its bytes
for a model given in memory) and takes cases one at a time through the same `cohort.CaseJob` as a
local run -- it reads the case and writes the case folder itself, on a filesystem every node sees,
with the same staging folder, case lock, commit and resume rules. Only a case's outcome line (and
its warnings) comes back; the driver reads summary.json from the shared folder. No result passes
through Ray's object store.

- Workers: one per `cpus` CPUs of the cluster (or `workers`), each running onnxruntime with that
  many intra-op threads, so actors x threads = the CPUs Ray gives them; one GPU each with
  `--provider cuda`. Sessions are built once per worker (from the node's disk cache when there).
- Faults: a worker process or node that dies during a case (Ray reports the actor dead) -> the case
  goes to another worker, a fresh one taking the dead one's place, at most `retries` times
  (default 2, so 3 attempts); what the dead worker staged is removed by the next worker to take
  the case, under its lock. A user error in a case (bad file, NaN) is that case's outcome, said
  once and never retried. A full disk stops the cohort as in a local run.
- Signals: SIGINT / SIGTERM / SIGHUP stop the driver with the status table and 128 + the signal;
  the workers are ended (their unfinished staging folders removed) and `--resume` finishes the rest.
  A driver killed outright takes its workers with it (Ray ends a job's actors with their owner);
  the next run cleans what they left.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cohort import CaseJob, CaseOutcome, CaseRequest, Interrupted, Item, Progress, TimeLeft, clean_stale
from .errors import InputError, NxrtError, OutputError

#: how many times a case is given to another worker after the one running it died
RETRIES = 2


def check_installed() -> None:
    """One line saying how to install Ray when it is not (Ray itself is imported only when the run
    starts: what it reads of the environment at import must be set first, see `_local_token`)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # (a module entry of None: Ray blocked)
        found = False
    if not found:
        raise InputError("--ray needs Ray, which is not installed; pip install 'nxrt[ray]' (on every node)")


def check_address(address: str | None) -> str | None:
    """A `--ray` ADDRESS: None / '' (a local Ray started by nxrt), 'auto', HOST:PORT or
    ray://HOST:PORT; anything else is one line (often a case path that followed a bare --ray)."""
    if not address or address in ("auto", "local"):
        return None if address in (None, "", "local") else address
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        hint = " (it is a file: give --ray its ADDRESS, or put --ray after the cases)" if Path(address).exists() \
            else ""
        raise InputError(f"--ray '{address}' is not a Ray address; give auto, HOST:PORT or ray://HOST:PORT, or "
                         f"--ray alone for a Ray on this machine{hint}")
    return address


class CaseWorker:
    """What runs inside one Ray actor (a threaded one: `explain` and `collect` may run at once): an
    Explainer built from the recipe, writing into the shared output folder. As the local runner,
    a case's last writes and commit (`finish`) run on a background thread while the next case is
    explained, at most `overlap` cases behind.

    `explain(label, source, retry)` loads and explains a case and returns a token, or the outcome
    at once when the case ended there (failed, or nothing to do); `collect(token)` waits for that
    case's commit and returns (outcome without its summary -- it is on disk --, warnings, whether
    the disk is full). retry: the case was given to a worker that died; it is taken as --resume
    would take it, so a case that worker had already committed is not refused as existing."""

    def __init__(self, recipe, out: str, request: CaseRequest, overlap: int = 1):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.explainer = recipe.build()
        self.out = Path(out)
        self.request = request
        self.finisher = ThreadPoolExecutor(1, thread_name_prefix="nxrt-finish")
        self.room = threading.BoundedSemaphore(overlap + 1)  # cases explained but not committed
        self.pending: dict[int, tuple] = {}
        self.tokens = 0

    def where(self) -> tuple[str, int]:
        """(host tag, pid) of this worker's process."""
        from .cohort import HOST

        return HOST, os.getpid()

    def explain(self, label: str, source, retry: bool = False):
        self.room.acquire()
        lines: list[str] = []
        request = replace(self.request, warn=lines.append)
        if retry and not request.overwrite:
            request = replace(request, resume=True)
        t0 = time.perf_counter()
        try:
            finish = CaseJob(self.explainer, self.out, request).start(source)
        except NxrtError as exc:
            self.room.release()
            return self._failed(label, exc, t0, lines)
        self.tokens += 1
        self.pending[self.tokens] = (label, t0, lines, self.finisher.submit(finish))
        return self.tokens

    def collect(self, token: int) -> tuple[CaseOutcome, list[str], bool]:
        label, t0, lines, future = self.pending.pop(token)
        try:
            outcome = future.result()
        except NxrtError as exc:
            return self._failed(label, exc, t0, lines)
        finally:
            self.room.release()
        return replace(outcome, summary=None), lines, False

    @staticmethod
    def _failed(label, exc: NxrtError, t0: float, lines: list[str]) -> tuple[CaseOutcome, list[str], bool]:
        full = isinstance(exc, OutputError) and exc.disk_full
        return CaseOutcome(Path(str(label)).name, f"FAILED: {exc}", time.perf_counter() - t0), lines, full


class RayRunner:
    """Cases on a Ray cluster (see the module docstring). address: None = a Ray started on this
    machine for the run (ended after it), 'auto' or HOST:PORT = the cluster there (ray://HOST:PORT
    through Ray Client). cpus: CPUs (and onnxruntime threads) per worker. workers: how many
    (default: the cluster's CPUs // cpus, at most one per case). retries: see RETRIES."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus: int = 1,
                 retries: int = RETRIES):
        if cpus < 1 or (workers is not None and workers < 1) or retries < 0:
            raise InputError("Ray workers and CPUs per worker must be at least 1, retries at least 0")
        self.address = check_address(address)
        self.workers = workers
        self.cpus = cpus
        self.retries = retries

    # ------------------------------------------------------------------ the runner interface

    def run(self, job: CaseJob, items: list[Item], isolate: bool, progress: Progress | None = None
            ) -> list[CaseOutcome]:
        check_installed()
        if self.address is None:
            _local_token()  # before Ray is imported: it reads its authentication mode once, at import
        import ray

        started_here = self._connect(ray)
        try:
            return _Dispatch(ray, self, job, items, isolate, progress).run()
        finally:
            if started_here:
                with contextlib.suppress(Exception):
                    ray.shutdown()

    def _connect(self, ray) -> bool:
        """Connect to the cluster (or start a Ray on this machine); True when this run started it."""
        import logging

        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            with _stderr_aside():
                if self.address is None:
                    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count() or 1, **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "this machine"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot reach a Ray cluster at {where} ({first}); start one with `ray start --head`, "
                             "or give --ray its address (HOST:PORT)") from None
        return True


class _Dispatch:
    """One cohort's cases handed to a pool of CaseWorker actors (RayRunner.run)."""

    def __init__(self, ray, runner: RayRunner, job: CaseJob, items: list[Item], isolate: bool,
                 progress: Progress | None):
        self.ray, self.runner, self.job, self.isolate, self.progress = ray, runner, job, isolate, progress
        self.out = Path(job.out).resolve()
        self.items = [(label, _absolute(source)) for label, source in items]
        self.request = _portable(job.request)
        # the providers the driver resolved ('auto' decided once, and GPUs asked of Ray to match)
        self.recipe = job.explainer.recipe(threads=runner.cpus, providers=job.explainer.providers)
        gpus = 1 if _wants_gpu(job.explainer.providers) else 0
        self.actor_class = ray.remote(CaseWorker).options(num_cpus=runner.cpus, num_gpus=gpus, max_restarts=0,
                                                          max_concurrency=2)
        self.outcomes: list[CaseOutcome | None] = [None] * len(items)
        self.places: dict[Any, tuple[str, int] | Any] = {}  # actor -> ObjectRef of its (host, pid)
        self.estimate = TimeLeft()  # (its parallelism set by run, to the number of workers)
        self.recorded: list[float] = []  # what the finished cases it skipped took when they were made

    def _new_worker(self):
        actor = self.actor_class.remote(self.recipe, str(self.out), self.request)
        self.places[actor] = actor.where.remote()
        return actor

    def run(self) -> list[CaseOutcome]:
        total_cpus = int(self.ray.cluster_resources().get("CPU", 1))
        count = self.runner.workers or max(1, total_cpus // self.runner.cpus)
        self.estimate.parallel = max(1, min(count, len(self.items)))
        idle = [self._new_worker() for _ in range(min(count, len(self.items)))]
        pending = deque(range(len(self.items)))
        running: dict[Any, tuple[int, Any, str]] = {}
        try:
            with _signals_noted() as stopped:
                self._loop(idle, pending, running, stopped)
        except _WorkersCannotStart as exc:
            self._end_workers()
            if not self.isolate:
                raise InputError(f"a Ray worker could not start: {exc}") from None
            for index, outcome in enumerate(self.outcomes):
                if outcome is None:
                    self.outcomes[index] = CaseOutcome(Path(str(self.items[index][0])).name,
                                                       f"not started (a Ray worker could not start: {exc})")
            return list(self.outcomes)
        except Interrupted as stop:
            name = self._signal_name(stop.signum)
            for index, *_ in running.values():
                self.outcomes[index] = CaseOutcome(Path(str(self.items[index][0])).name, f"stopped ({name})")
            for index in pending:
                self.outcomes[index] = CaseOutcome(Path(str(self.items[index][0])).name, "not started")
            self._end_workers()
            stop.outcomes = [o for o in self.outcomes if o is not None]
            raise
        self._end_workers()
        return [o for o in self.outcomes if o is not None]

    def _loop(self, idle: list, pending: deque, running: dict, stopped: list[int]) -> None:
        """Hand out cases until each has an outcome; a noted signal raises Interrupted (checked
        at least once a second: raising from the handler itself, inside Ray's C++ wait, is unsafe).
        `running` maps each Ray call in flight to (case index, actor, "explain" | "collect")."""
        ray = self.ray
        deaths = [0] * len(self.items)
        full = False
        while pending or running:
            if stopped:
                raise Interrupted(stopped[0])
            while idle and pending and not full:
                index = pending.popleft()
                actor = idle.pop()
                label, source = self.items[index]
                running[actor.explain.remote(label, source, deaths[index] > 0)] = (index, actor, "explain")
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                index, actor, step = running.pop(ref)
                name = Path(str(self.items[index][0])).name
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # nxrt itself failed on the worker: said, not retried
                    if step == "explain":
                        idle.append(actor)
                    cause = getattr(exc, "cause", None) or exc
                    result = (CaseOutcome(name, f"FAILED: {cause!r}"), [], False)
                except ray.exceptions.RayError as exc:  # the worker (or its node) died
                    if getattr(exc, "actor_init_failed", False):  # or never started: nor will the others
                        raise _WorkersCannotStart(_last_line(str(exc))) from None
                    if self._forget(actor):
                        idle[:] = [a for a in idle if a is not actor]
                        idle.append(self._new_worker())
                    deaths[index] += 1
                    if deaths[index] <= self.runner.retries:
                        pending.appendleft(index)
                        continue
                    result = (CaseOutcome(name, f"FAILED: its worker died {deaths[index]} times "
                                                f"({type(exc).__name__}); the case was not finished"), [], False)
                else:
                    if step == "explain":
                        idle.append(actor)  # it explains the next case while this one is committed
                        if isinstance(result, int):
                            running[actor.collect.remote(result)] = (index, actor, "collect")
                            continue
                outcome, warnings, disk_full = result
                if deaths[index] and outcome.status.startswith("skipped") and not self.job.request.resume:
                    outcome = replace(outcome, status="ok")  # the worker that died had committed it
                full = full or disk_full
                self._settle(index, outcome, warnings, sum(step == "explain" for *_, step in running.values()))
        while pending:  # only after a full disk
            index = pending.popleft()
            self.outcomes[index] = CaseOutcome(Path(str(self.items[index][0])).name,
                                               "not started (no space left on the device)")

    def _settle(self, index: int, outcome: CaseOutcome, warnings: list[str], running: int) -> None:
        from .case_folder import read_summary

        if not self.isolate and outcome.failed:
            raise InputError(outcome.status[len("FAILED: "):])
        warn = self.job.request.warn
        for line in warnings:
            if warn is not None:
                warn(line)
        if outcome.status == "ok":
            with contextlib.suppress(NxrtError):
                outcome = replace(outcome, summary=read_summary(self.out / outcome.name))
        self.outcomes[index] = outcome
        if outcome.recorded_seconds is not None:
            self.recorded.append(outcome.recorded_seconds)
        elif outcome.status == "ok":  # (a worker's time on the case, loading to commit)
            self.estimate.add(outcome.seconds)
        if self.progress is not None:
            done = sum(o is not None for o in self.outcomes)
            failed = sum(o is not None and o.failed for o in self.outcomes)
            left = self.estimate.seconds(len(self.outcomes) - done, self.recorded) if done < len(self.outcomes) \
                else None
            status = "FAILED" if outcome.failed else outcome.status  # (its reason is said once, in the table)
            self.progress(done, len(self.outcomes), outcome.name,
                          f"{status} ({done - failed} done, {failed} failed, {running} running)", left)

    def _forget(self, actor) -> bool:
        """Drop a dead worker (True the first time: its other calls in flight fail too)."""
        if self.places.pop(actor, None) is None:
            return False
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)
        return True

    def _end_workers(self) -> None:
        """End every worker, then remove what the ones on this machine left staged (a worker on
        another machine leaves its staging to the next run, which removes it under the case's lock)."""
        from .cohort import HOST, _alive

        ray = self.ray
        here = []
        for actor, place in list(self.places.items()):
            with contextlib.suppress(Exception):
                host, pid = ray.get(place, timeout=5)
                if host == HOST:
                    here.append(pid)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.places.clear()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in here) and time.monotonic() < deadline:
            time.sleep(0.1)
        clean_stale(self.out)

    @staticmethod
    def _signal_name(signum: int) -> str:
        import signal

        return signal.Signals(signum).name


@contextlib.contextmanager
def _signals_noted():
    """SIGINT / SIGTERM / SIGHUP noted in the yielded list instead of raised (the dispatch loop
    raises `Interrupted` itself); the previous handlers come back afterwards."""
    import signal
    import threading

    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {n: signal.signal(getattr(signal, n), lambda signum, frame: noted.append(signum)) for n in names}
    try:
        yield noted
    finally:
        for n, handler in previous.items():
            signal.signal(getattr(signal, n), handler)


def _local_token() -> None:
    """The Ray nxrt starts for a run is token-authenticated (Ray's default for local clusters since
    2.59) with a secret of this run's, kept in the environment its workers inherit: Ray would
    otherwise write ~/.ray/auth_token into the user's home, which then stands in the way of their
    own `ray start` clusters. A token the user configured is left as it is."""
    import secrets

    if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@contextlib.contextmanager
def _stderr_aside():
    """Ray's C++ core writes its own lines to file descriptor 2 while it connects ("failed to
    determine local IP" on a host without a route out, log-level notes): not the user's business.
    They go to a temporary file for that moment; nxrt says what failed, in one line."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as aside:
        os.dup2(aside.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _WorkersCannotStart(Exception):
    """A worker failed while it was being built (its Explainer: e.g. the model is not at its path
    on that node): the cohort stops, its remaining cases `not started` with the reason."""


def _last_line(text: str) -> str:
    """The reason at the end of a Ray error's text (the last line of the worker's traceback),
    without the exception's module path."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text
    head, sep, rest = last.partition(": ")
    return rest if sep and "." in head and " " not in head else last


def _absolute(source):
    """A case source as a worker can open it: paths made absolute (workers do not share the
    driver's working folder)."""
    if isinstance(source, str | os.PathLike) and Path(source).exists():
        return str(Path(source).resolve())
    return source


def _portable(request: CaseRequest) -> CaseRequest:
    """The request as plain data for the workers: every path absolute, no driver callback (a
    worker collects its warnings and the driver says them)."""
    files = {k: _absolute(v) for k, v in request.channel_files.items()} if request.channel_files else None
    return replace(request, warn=None, channel_files=files, mask=_absolute(request.mask) if request.mask else None)


def _wants_gpu(providers) -> bool:
    return any("CUDA" in str(p) for p in (providers or []))
