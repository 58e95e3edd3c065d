"""summary.json says which model, which software, which provider and which command made a case,
and when (issue 14: provenance)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from importlib.metadata import version

import numpy as np
import onnxruntime

from tests.builders import run_cli, write_case


def test_summary_records_provenance(tmp_path, seg_onnx):
    write_case(tmp_path / "c", "c")
    before = datetime.now().astimezone()
    res = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    prov = summary["provenance"]
    assert prov["model"]["path"] == str(seg_onnx.resolve())
    assert prov["model"]["sha256"] == hashlib.sha256(seg_onnx.read_bytes()).hexdigest()
    assert prov["model"]["card"]["nxrt.task"] == "segmentation"
    assert prov["versions"] == {"nxrt": version("nxrt"), "onnxruntime": onnxruntime.__version__,
                                "onnx": version("onnx"), "numpy": np.__version__, "nibabel": version("nibabel")}
    assert prov["provider"] == "CPUExecutionProvider"
    assert prov["command"].startswith("nxrt explain ") and str(tmp_path / "c") in prov["command"]
    started, finished = (datetime.fromisoformat(prov[k]) for k in ("started_utc", "finished_utc"))
    assert started.utcoffset().total_seconds() == 0
    assert before.replace(microsecond=0) <= started <= finished
    entry = summary["methods"]["vanilla"]
    assert entry["target"] == [1, 2] and entry["target_labels"] == ["core", "edema"]
    inputs = {str(tmp_path / "c" / f"c_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")}
    assert inputs <= {str(p) for p in summary["sources"]}, summary["sources"]
