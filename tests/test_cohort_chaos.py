"""Chaos: a cohort SIGKILLed at random moments (seeded), each kill followed by --resume. After every
kill each case folder is complete or absent; after the resume every case is complete and its
files hold exactly what an uninterrupted run wrote."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from tests.builders import write_case

CASES = [f"c{k}" for k in range(1, 7)]
FILES = ["vanilla.nii.gz", "vanilla_map.nii.gz", "gradcam.nii.gz", "gradcam_map.nii.gz", "prediction.nii.gz",
         "overview.png", "report.html", "thumbnail.png", "summary.json"]


def command(seg_onnx, root, out, *extra):
    return [sys.executable, "-m", "nxrt.cli", "explain", str(seg_onnx), *[str(root / c) for c in CASES],
            "-m", "vanilla", "-m", "gradcam", "-o", str(out), *extra]


def assert_complete(case):
    assert sorted(p.name for p in case.iterdir()) == sorted(FILES), case
    json.loads((case / "summary.json").read_text())
    for name in FILES:
        if name.endswith(".nii.gz"):
            np.asarray(nib.load(str(case / name)).dataobj)  # the whole file decompresses


def contents(case):
    return {name: (np.asarray(nib.load(str(case / name)).dataobj), nib.load(str(case / name)).affine)
            for name in FILES if name.endswith(".nii.gz")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, seg_onnx):
    root = tmp_path_factory.mktemp("chaos")
    for name in CASES:
        write_case(root / name, name)
    ref = root / "reference"
    proc = subprocess.Popen(command(seg_onnx, root, ref), stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()  # the model note; the work starts after it
    t0 = time.perf_counter()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return root, ref, time.perf_counter() - t0


@pytest.mark.parametrize("trial", range(5))
def test_sigkill_at_a_random_moment_then_resume(cohort, seg_onnx, trial):
    root, ref, work_seconds = cohort
    rng = random.Random(1000 + trial)
    out = root / f"out{trial}"
    proc = subprocess.Popen(command(seg_onnx, root, out), stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()  # imports done, the model loaded: kill somewhere in the work
    time.sleep(rng.uniform(0, work_seconds))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    if out.exists():
        for case in out.iterdir():
            if not case.name.startswith(".") and case.is_dir():  # staging and locks of the dead run may stay
                assert_complete(case)

    again = subprocess.run(command(seg_onnx, root, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == CASES + ["index.html"]  # nothing hidden is left behind
    for name in CASES:
        assert_complete(out / name)
        got, want = contents(out / name), contents(ref / name)
        for file, (data, affine) in want.items():
            assert got[file][0].dtype == data.dtype and np.array_equal(got[file][0], data), (name, file)
            np.testing.assert_array_equal(got[file][1], affine)
