"""What a user meets when the world is not as expected: a full disk, files that are not what their
names say, usage slips, inputs with no information, headers with codes 0. Each is one true line
(exit 2) or a clean stop with the status table; none names a temporary file."""

from __future__ import annotations

import gzip
import shlex
import subprocess
import sys

import nibabel as nib
import numpy as np
import onnx
import pytest
from PIL import Image

from tests.builders import oblique_affine, run_cli, write_case


def one_line(res, *words):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert ".tmp" not in lines[0] and ".partial" not in lines[0] and "Traceback" not in res.stderr
    return lines[0]


def on_small_disk(tmp_path, kib, args, copy_to):
    """Run `nxrt ARGS` with its output on a tmpfs of `kib` KiB (a private mount namespace: the disk
    exists only for this command), then copy what it left there to `copy_to`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    nxrt = shlex.join([sys.executable, "-m", "nxrt.cli", *map(str, args)])
    script = (f"mount -t tmpfs -o size={kib}k nxrt-test {shlex.quote(str(disk))} && {{ {nxrt}; echo $? > "
              f"{shlex.quote(str(tmp_path / 'rc'))}; }}; cp -a {shlex.quote(str(disk))}/. {shlex.quote(str(copy_to))}")
    copy_to.mkdir()
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    res.returncode = int((tmp_path / "rc").read_text())
    return disk, res


def test_a_full_disk_stops_the_cohort_cleanly_with_its_table(tmp_path, seg_onnx):
    n = 6
    for k in range(1, n + 1):
        write_case(tmp_path / f"c{k}", f"c{k}")
    cases = [tmp_path / f"c{k}" for k in range(1, n + 1)]
    ref = tmp_path / "ref"
    assert run_cli("explain", seg_onnx, cases[0], "-m", "vanilla", "-o", ref).returncode == 0
    per_case = sum(-(-f.stat().st_size // 4096) * 4 for f in (ref / "c1").iterdir())  # KiB in tmpfs pages
    disk, res = on_small_disk(tmp_path, int(per_case * 2.5), ["explain", seg_onnx, *cases, "-m", "vanilla", "-o",
                                                              tmp_path / "disk" / "run"], tmp_path / "left")
    rows = [line.split(None, 1) for line in res.stdout.splitlines()[:n]]
    status = [r[1] for r in rows]
    first = next(k for k, st in enumerate(status) if not st.startswith("ok"))
    assert first >= 1 and all(st.startswith("ok") for st in status[:first]), res.stdout
    for (name, st) in rows[first:]:  # cases already explained when the disk filled finish or fail; none starts
        assert st.startswith(("ok", f"FAILED: no space left on device writing {disk / 'run' / name}/",
                              "not started (no space left on the device)")), res.stdout
    assert status[first].startswith("FAILED: no space left on device") and "free some space" in status[first]
    assert sum(not st.startswith("not started") for st in status[first + 1:]) <= 2  # at most the in-flight ones
    assert status[-1] == "not started (no space left on the device)"
    ok = sorted(name for name, st in rows if st.startswith("ok"))
    assert res.returncode == n - len(ok), (res.stdout, res.stderr)  # the cases not done
    assert f"{len(ok)} of {n} case(s) done" in res.stdout and "--resume finishes the rest" in res.stdout
    assert "Traceback" not in res.stderr
    left = tmp_path / "left" / "run"
    assert sorted(p.name for p in left.iterdir() if p.is_dir()) == ok  # the failed cases' staging is gone
    for name in ok:
        assert sorted(p.name for p in (left / name).iterdir()) == sorted(p.name for p in (ref / "c1").iterdir())


def test_a_full_disk_on_one_case_is_one_line_naming_the_file(tmp_path, seg_onnx):
    write_case(tmp_path / "c1", "c1")
    disk, res = on_small_disk(tmp_path, 24, ["explain", seg_onnx, tmp_path / "c1", "-m", "vanilla", "-o",
                                             tmp_path / "disk" / "run"], tmp_path / "left")
    one_line(res, f"no space left on device writing {disk / 'run' / 'c1'}/", "free some space")
    assert not any((tmp_path / "left" / "run").iterdir())


@pytest.fixture()
def files(tmp_path):
    write_case(tmp_path / "c1", "c1")
    flair = tmp_path / "c1" / "c1_flair.nii.gz"
    packed = flair.read_bytes()
    raw = gzip.decompress(packed)
    (tmp_path / "half.nii.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "half.nii").write_bytes(raw[: len(raw) - 1000])
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "photo.nii.gz").write_bytes((tmp_path / "photo.png").read_bytes())
    (tmp_path / "empty").mkdir()
    (tmp_path / "unnamed").mkdir()
    (tmp_path / "unnamed" / "scan_a.nii.gz").write_bytes(packed)
    return tmp_path


@pytest.mark.parametrize("case, words", [
    ("half.nii", ["half.nii: the file is truncated", "copy or export it again"]),
    ("half.nii.gz", ["half.nii.gz: the file is truncated"]),
    ("photo.png", ["photo.png: not a NIfTI file"]),
    ("photo.nii.gz", ["photo.nii.gz: named .gz but not gzip-compressed (it looks like a PNG image)"]),
    ("empty", ["empty: a folder with no NIfTI files in it"]),
    ("unnamed", ["unnamed: its NIfTI files (scan_a.nii.gz) do not carry BraTS names", "--channel"]),
    ("MODEL", ["an ONNX model, not a case; the model comes first"]),
])
def test_files_that_are_not_cases_each_get_their_own_true_line(files, seg_onnx, case, words):
    given = seg_onnx if case == "MODEL" else files / case
    res = run_cli("explain", seg_onnx, given, "-m", "vanilla", "-o", files / "out")
    one_line(res, *words)
    assert "sizeof_hdr" not in res.stderr


@pytest.mark.parametrize("args, words", [
    (["-t", "abc"], ["target 'abc': the model card has no label of that name; its labels: background (0)"]),
    (["-o", "FILE"], ["Invalid value for '-o' / '--output'", "is a file"]),
    (["-m", "vanilla", "gradcam"], ["gradcam: no such case", "give each method its own -m (-m vanilla -m gradcam)"]),
    (["--no-such-option"], ["No such option '--no-such-option'"]),
])
def test_usage_errors_are_one_line_and_exit_2(files, seg_onnx, args, words):
    args = [files / "photo.png" if a == "FILE" else a for a in args]
    one_line(run_cli("explain", seg_onnx, files / "c1", *args), *words)


def test_writers_name_the_path_given_not_their_temporary_file(files, seg_onnx):
    blocker = files / "blocker"
    blocker.write_text("a file where a folder is expected")
    res = run_cli("layers", seg_onnx, files / "c1", "-o", blocker / "l.png")
    one_line(res, f"writing {blocker / 'l.png'}", "not a directory")
    res = run_cli("augment", seg_onnx, "-o", blocker / "a.onnx")
    one_line(res, f"writing {blocker / 'a.onnx'}", "not a directory")


def test_a_damaged_onnx_file_is_said_to_be_damaged(files, seg_onnx):
    data = bytearray(seg_onnx.read_bytes())
    model = onnx.load(str(seg_onnx))
    name = model.graph.node[0].name.encode()  # a flipped byte inside a name: still parses as protobuf
    at = data.index(name)
    data[at] ^= 0xFF
    (files / "damaged.onnx").write_bytes(bytes(data))
    one_line(run_cli("explain", files / "damaged.onnx", files / "c1", "-o", files / "out"),
             "damaged.onnx: not a valid ONNX model", "damaged")


def write_4d(path, data):
    nib.save(nib.Nifti1Image(data.astype(np.float32), oblique_affine()), str(path))


def test_cases_without_information_are_refused_without_numpy_warnings(tmp_path, seg_onnx):
    # (the tiny segmenter's card asks for z-score normalisation: builders.seg_model)
    shape = (20, 14, 17, 4)
    write_4d(tmp_path / "zeros.nii.gz", np.zeros(shape))
    constant = np.zeros(shape)
    constant[4:16, 3:11, 4:13, :] = 1.0  # a brain of one value in every channel
    write_4d(tmp_path / "constant.nii.gz", constant)
    one_channel = np.random.default_rng(0).uniform(0.5, 2, shape)
    one_channel[..., 2] = 0
    write_4d(tmp_path / "no_t1ce.nii.gz", one_channel)
    for name, words in (("zeros", ["every voxel of every channel is zero"]),
                        ("constant", ["has one value (1) in all its", "z-score", "is undefined"]),
                        ("no_t1ce", ["channel 't1ce' is all zero", "z-score"])):
        res = run_cli("explain", seg_onnx, tmp_path / f"{name}.nii.gz", "-m", "vanilla", "-o", tmp_path / name)
        one_line(res, f"{name}.nii.gz", *words)
        assert "RuntimeWarning" not in res.stderr


def test_coordinate_codes_0_are_kept_and_the_map_overlays_the_scan(tmp_path, seg_onnx):
    data = np.random.default_rng(1).uniform(0.5, 2, (20, 14, 17, 4)).astype(np.float32)
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "nocodes.nii.gz"))
    scan = nib.load(str(tmp_path / "nocodes.nii.gz"))
    assert int(scan.header["qform_code"]) == 0 and int(scan.header["sform_code"]) == 0
    res = run_cli("explain", seg_onnx, tmp_path / "nocodes.nii.gz", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    for name in ("vanilla", "vanilla_map", "prediction"):
        out = nib.load(str(tmp_path / "out" / "nocodes" / f"{name}.nii.gz"))
        assert int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 0
        np.testing.assert_allclose(out.affine, scan.affine, atol=1e-6)  # placed as the scan is
        assert out.header.get_xyzt_units() == ("mm", "unknown")


def test_a_map_that_is_zero_everywhere_is_said_not_drawn_black_in_silence(tmp_path, seg_onnx):
    import json

    model = onnx.load(str(seg_onnx))
    w = model.graph.initializer[0]
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 0, w.name))  # the score ignores x
    onnx.save(model, str(tmp_path / "dead.onnx"))
    write_case(tmp_path / "c1", "c1")
    res = run_cli("explain", tmp_path / "dead.onnx", tmp_path / "c1", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "c1: vanilla: the map is zero everywhere" in res.stderr and "RuntimeWarning" not in res.stderr
    entry = json.loads((tmp_path / "out" / "c1" / "summary.json").read_text())["methods"]["vanilla"]
    assert any("zero everywhere" in w for w in entry["warnings"])
    assert not np.asarray(nib.load(str(tmp_path / "out" / "c1" / "vanilla.nii.gz")).dataobj).any()
