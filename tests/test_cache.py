"""The disk cache of augmented models: reuse across Explainers/processes, corruption, races."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx

import nxrt
from tests.builders import tiny_classifier

X = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)


def entries(folder):
    return sorted(p for p in folder.glob("*.onnx"))


def test_second_explainer_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NXRT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(path))
    first, second = nxrt.Explainer(path), nxrt.Explainer(path)
    a = first.explain(X, "vanilla", target=1)
    assert first.stats()["graphs_built"] == 1 and len(entries(tmp_path / "cache")) == 1
    b = second.explain(X, "vanilla", target=1)
    assert second.stats()["graphs_built"] == 0  # served from the cache: no pass invocation
    np.testing.assert_array_equal(a, b)


def test_corrupted_entry_is_detected_and_rebuilt(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NXRT_CACHE", str(cache))
    model = tiny_classifier()
    a = nxrt.Explainer(model).explain(X, "vanilla", target=0)
    (entry,) = entries(cache)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    rebuilt = nxrt.Explainer(model)
    b = rebuilt.explain(X, "vanilla", target=0)
    assert rebuilt.stats()["graphs_built"] == 1  # rebuilt
    np.testing.assert_array_equal(a, b)
    (entry,) = entries(cache)
    again = nxrt.Explainer(model)
    again.explain(X, "vanilla", target=0)
    assert again.stats()["graphs_built"] == 0  # and the rebuilt entry is valid again


def test_two_processes_racing_on_one_entry_both_succeed(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(path))
    script = textwrap.dedent(f'''
        import numpy as np, nxrt
        x = np.ones((1, 3, 8, 8), np.float32)
        for _ in range(5):
            a = nxrt.Explainer({str(path)!r}).explain(x, "vanilla", target=1)
        print(float(np.abs(a).sum()))
    ''')
    env = {"NXRT_CACHE": str(tmp_path / "cache"), "PATH": ""}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert len(entries(tmp_path / "cache")) == 1


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NXRT_CACHE", "off")
    for _ in range(2):
        ex = nxrt.Explainer(tiny_classifier())
        ex.explain(X, "vanilla", target=0)
        assert ex.stats()["graphs_built"] == 1
