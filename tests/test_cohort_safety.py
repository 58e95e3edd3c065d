"""Cohorts that never lose or half-write a result: case identity, signals, leftovers of killed runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from tests.builders import oblique_affine, run_cli, write_case


def test_cases_that_would_share_a_folder_are_refused_before_any_work(tmp_path, seg_onnx):
    for folder in ("p1", "p2"):
        (tmp_path / folder).mkdir()
        data = np.random.default_rng(0).uniform(0.5, 2, (20, 14, 17, 4)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, oblique_affine()), str(tmp_path / folder / "scan.nii.gz"))
    write_case(tmp_path / "a" / "BraTS2021_00007", "BraTS2021_00007")
    write_case(tmp_path / "b" / "BraTS2021_00007", "BraTS2021_00007")
    for cases, name in (([tmp_path / "p1" / "scan.nii.gz", tmp_path / "p2" / "scan.nii.gz"], "scan"),
                        ([tmp_path / "a" / "BraTS2021_00007", tmp_path / "b" / "BraTS2021_00007"], "BraTS2021_00007")):
        out = tmp_path / f"out_{name}"
        res = run_cli("explain", seg_onnx, *cases, "-m", "vanilla", "-o", out)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert str(cases[0]) in lines[0] and str(cases[1]) in lines[0] and f"case '{name}'" in lines[0]
        assert not out.exists() or not any(out.iterdir())


def slow_cohort(tmp_path, seg_onnx, n=3):
    for k in range(1, n + 1):
        write_case(tmp_path / f"c{k}", f"c{k}")
    # guided IG's steps are sequential: ~2-4 s per case here, time enough to signal in between
    args = [sys.executable, "-m", "nxrt.cli", "explain", str(seg_onnx), *[str(tmp_path / f"c{k}") for k in
                                                                         range(1, n + 1)],
            "-m", "gig", "-p", "gig.steps=1500", "-o", str(tmp_path / "out")]
    return args


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_keeps_committed_cases_removes_staging_and_reports(tmp_path, seg_onnx, signum, code):
    args = slow_cohort(tmp_path, seg_onnx)
    out = tmp_path / "out"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "c1" / "summary.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (out / "c1" / "summary.json").exists(), proc.communicate()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout, stderr)
    assert f"stopped by {signal.Signals(signum).name}" in stdout
    assert "c1  ok" in stdout and ("stopped" in stdout or "not started" in stdout)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    for case in out.iterdir():  # every case folder there is complete
        assert (case / "summary.json").exists() and (case / "guided_ig.nii.gz").exists()
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all((out / f"c{k}" / "summary.json").exists() for k in (1, 2, 3))


def test_leftovers_of_killed_runs_are_cleaned_and_a_moved_case_is_put_back(tmp_path, seg_onnx):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, live = gone.pid, os.getpid()
    (out / f".c1.partial-{dead}-beef").mkdir()
    (out / f".c1.partial{dead}").mkdir()  # the older naming
    moved = out / f".kept.old-{dead}-beef"
    moved.mkdir()
    (moved / "summary.json").write_text("{}")
    (out / f".c1.partial-{live}-beef").mkdir()  # a live run's: left alone
    write_case(tmp_path / "c1", "c1")
    res = run_cli("explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o", out)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([f".c1.partial-{live}-beef", "c1", "kept"])
    assert (out / "kept" / "summary.json").read_text() == "{}"
