"""`nxrt explain --ray` on a real multi-node Ray cluster: a head and a second node (one CPU each,
`ray start`), inside a private network namespace that has only `lo`, so nothing can leave
loopback (tests/ray_cluster.py; it ends exactly the processes it started, by pid). The driver runs
in the same namespace (nsenter). What must hold, as for a local run: the outputs are bitwise those
of the local runner, a broken case is one line and the exit code is the local run's, a worker
SIGKILLed during a case loses nothing and duplicates nothing, and --resume after an interrupted
driver runs only the missing cases."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.builders import write_case
from tests.ray_cluster import driver_env

ROOT = Path(__file__).resolve().parent.parent
KEEPER = ROOT / "tests" / "ray_cluster.py"
PORT = 6379  # inside the namespace: nothing else listens there
CASES = [f"r{k}" for k in range(1, 7)]
# integrated gradients with many steps makes a case last long enough to be caught in flight
METHODS = ["-m", "vanilla", "-m", "ig", "-p", "ig.steps=3000"]


def readline(stream, seconds: float) -> str:
    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


@pytest.fixture(scope="module")
def cluster():
    """The keeper's pid (its network namespace is the cluster's); drivers get `driver_env`."""
    temp = tempfile.mkdtemp(prefix="nxrt-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    proc = subprocess.Popen(["unshare", "-n", "--", sys.executable, str(KEEPER), str(PORT), "2", temp],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = readline(proc.stdout, 180)
        assert line.strip() == "ready", f"the cluster did not start: {line}{proc.stdout.read() if line else ''}"
        os.environ.update(driver_env(temp))  # (every driver below inherits it)
        yield proc.pid
    finally:
        for key in driver_env(temp):
            os.environ.pop(key, None)
        proc.stdin.close()
        proc.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def in_cluster(keeper: int, *args) -> list[str]:
    return ["nsenter", f"--net=/proc/{keeper}/ns/net", "--", *args]


def explain(*args) -> list[str]:
    return [sys.executable, "-m", "nxrt.cli", "explain", *map(str, args)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, seg_onnx):
    """Six good cases and one broken one (its FLAIR file truncated), and the local run of them."""
    root = tmp_path_factory.mktemp("raycases")
    for name in CASES:
        write_case(root / name, name)
    write_case(root / "broken", "broken")
    flair = root / "broken" / "broken_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    local = subprocess.run(explain(seg_onnx, *[root / c for c in [*CASES, "broken"]], *METHODS, "-o", root / "local"),
                           capture_output=True, text=True, timeout=600)
    return root, local


def contents(case: Path) -> dict:
    return {p.name: (np.asarray(nib.load(str(p)).dataobj), nib.load(str(p)).affine)
            for p in sorted(case.glob("*.nii.gz"))}


def assert_same_as_local(out: Path, local: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(CASES + ["index.html"]), "every case once, nothing hidden"
    for name in CASES:
        got, want = contents(out / name), contents(local / name)
        assert sorted(got) == sorted(want) and len(want) >= 5, name
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(p.name for p in (local / name).iterdir())
        for file, (data, affine) in want.items():
            assert got[file][0].dtype == data.dtype and np.array_equal(got[file][0], data), (name, file)
            np.testing.assert_array_equal(got[file][1], affine)


def test_a_cohort_on_the_cluster_equals_the_local_run_and_a_broken_case_is_one_line(cluster, cohort, seg_onnx):
    root, local = cohort
    assert local.returncode == 1, local.stderr  # one case not done
    out = root / "ray"
    res = subprocess.run(in_cluster(cluster, *explain(seg_onnx, *[root / c for c in [*CASES, "broken"]], *METHODS,
                                                      "-o", out, "--ray", f"127.0.0.1:{PORT}")),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == local.returncode == 1, res.stderr
    said = [line for line in (res.stdout + res.stderr).splitlines() if "broken_flair.nii.gz" in line]
    assert len(said) == 1 and said[0].startswith("broken  FAILED: ") and "truncated" in said[0], res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert not [line for line in res.stderr.splitlines() if not line.startswith(("nxrt: ", "["))], res.stderr
    want = [line for line in local.stdout.splitlines() if "FAILED" in line]
    assert [line for line in res.stdout.splitlines() if "FAILED" in line] == want  # the same line as locally
    shutil.rmtree(root / "local" / "broken", ignore_errors=True)
    assert_same_as_local(out, root / "local")
    done = [line for line in res.stderr.splitlines() if line.startswith("[")]
    assert done and "done" in done[-1] and "running" in done[-1]  # one progress line per case, cluster-wide


def test_a_worker_killed_during_a_case_loses_nothing_and_duplicates_nothing(cluster, cohort, seg_onnx):
    root, _ = cohort
    out = root / "killed"
    proc = subprocess.Popen(in_cluster(cluster, *explain(seg_onnx, *[root / c for c in CASES], *METHODS, "-o", out,
                                                         "--ray", f"127.0.0.1:{PORT}")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for lock in sorted(out.glob(".*.lock")) if out.exists() else []:
            name = lock.name[1:-len(".lock")]
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                continue
            if pid and any(out.glob(f".{name}.partial-{pid}-*")):  # a worker in the middle of a case
                victim = (name, pid)
                os.kill(pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    assert victim is not None, "no case was caught in flight"
    assert proc.returncode == 0, stdout + stderr
    assert f"{victim[0]}  ok" in stdout  # the killed worker's case was finished by another worker
    assert_same_as_local(out, root / "local")


def test_resume_after_an_interrupted_driver_runs_only_the_missing_cases(cluster, cohort, seg_onnx):
    root, _ = cohort
    out = root / "interrupted"
    cmd = in_cluster(cluster, *explain(seg_onnx, *[root / c for c in CASES], *METHODS, "-o", out,
                                       "--ray", f"127.0.0.1:{PORT}"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("*/summary.json"))) >= 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "--resume finishes the rest" in stdout
    committed = sorted(p.parent.name for p in out.glob("*/summary.json"))
    assert 2 <= len(committed) < len(CASES)
    assert sorted(p.name for p in out.iterdir()) == committed  # no staging left behind by the workers

    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = dict(line.split(None, 1) for line in again.stdout.splitlines()[:-1])
    assert {n for n, status in lines.items() if status.startswith("skipped")} == set(committed)
    assert {n for n, status in lines.items() if status.startswith("ok")} == set(CASES) - set(committed)
    assert_same_as_local(out, root / "local")


def test_python_runner_without_an_address_starts_ray_on_this_machine(tmp_path, seg_onnx, cohort):
    """`nxrt.cohort.run(..., runner=RayRunner())` (what `--ray` alone does): a Ray started by nxrt
    for the run, on loopback only (its own namespace here), ended after it; nothing written into
    the home folder; the outputs equal the local run's."""
    root, _ = cohort
    home_token = (Path.home() / ".ray" / "auth_token").exists()
    out = tmp_path / "embedded"
    script = ("import sys\nfrom nxrt.cohort import run\nfrom nxrt.cohort_ray import RayRunner\n"
              "report = run(sys.argv[1], sys.argv[3:], sys.argv[2], methods=['vanilla', 'ig'],\n"
              "             params={'integrated_gradients': {'steps': 3000}}, runner=RayRunner())\n"
              "print(*report.lines(), sep='\\n')\nsys.exit(report.exit_code)\n")
    res = subprocess.run(["unshare", "-n", "--", sys.executable, str(KEEPER), "run", sys.executable, "-c", script,
                          str(seg_onnx), str(out), *[str(root / c) for c in CASES[:2]]],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")})
    assert res.returncode == 0 and "2 of 2 case(s) done" in res.stdout, res.stdout + res.stderr
    assert not (Path.home() / ".ray" / "auth_token").exists() or home_token  # nothing written into the home
    for name in CASES[:2]:
        got, want = contents(out / name), contents(root / "local" / name)
        for file, (data, _) in want.items():
            assert np.array_equal(got[file][0], data), (name, file)


def test_ray_misuse_is_one_line(tmp_path, seg_onnx, cohort):
    root, _ = cohort
    case = root / CASES[0]
    res = subprocess.run(explain(seg_onnx, "--ray", case, "-o", tmp_path / "o"), capture_output=True, text=True)
    assert res.returncode == 2 and "is not a Ray address" in res.stderr and "put --ray after the cases" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(explain(seg_onnx, case, "--ray-workers", "2", "-o", tmp_path / "o"), capture_output=True,
                         text=True)
    assert res.returncode == 2 and "add --ray" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    blocked = ("import sys; sys.modules['ray'] = None; from nxrt.cli import main; "
               "sys.argv = ['nxrt'] + sys.argv[1:]; main()")
    res = subprocess.run([sys.executable, "-c", blocked, "explain", str(seg_onnx), str(case), "--ray", "-o",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'nxrt[ray]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o" / CASES[0]).exists()


def test_a_model_the_workers_cannot_read_stops_the_cohort_in_one_line(tmp_path, seg_onnx, cohort):
    """The driver read the model, but the workers cannot (here: the file is replaced by something
    else after the driver loaded it): every case `not started`, with the workers' reason."""
    root, _ = cohort
    script = ("import shutil, sys\nfrom nxrt import Explainer\nfrom nxrt.cohort import run\n"
              "from nxrt.cohort_ray import RayRunner\n"
              "shutil.copy(sys.argv[1], sys.argv[2])\nex = Explainer(sys.argv[2])\n"
              "open(sys.argv[2], 'wb').write(b'not a model')\n"
              "report = run(ex, sys.argv[4:], sys.argv[3], methods=['vanilla'], runner=RayRunner())\n"
              "print(*report.lines(), sep='\\n')\nsys.exit(report.exit_code)\n")
    res = subprocess.run(["unshare", "-n", "--", sys.executable, str(KEEPER), "run", sys.executable, "-c", script,
                          str(seg_onnx), str(tmp_path / "moved.onnx"), str(tmp_path / "out"),
                          *[str(root / c) for c in CASES[:3]]],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 3, res.stdout + res.stderr
    rows = res.stdout.splitlines()[:3]
    assert all("not started (a Ray worker could not start: " in row and "moved.onnx" in row for row in rows), rows
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir()]
