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


def test_the_cache_is_capped_and_evicts_the_least_recently_used(tmp_path, monkeypatch):
    import time

    from nxrt import cache

    root = tmp_path / "cache"
    monkeypatch.setenv("NXRT_CACHE", str(root))
    model = tiny_classifier()

    def build(method):  # one entry per kind of session: plain, guided, layers
        nxrt.Explainer(model).explain(X, method, target=1)
        time.sleep(0.05)  # distinct use times

    build("vanilla")
    ((plain, one, _),) = cache.entries(root)
    monkeypatch.setenv("NXRT_CACHE_MAX", str(int(2.5 * one)))  # room for two entries of this size
    build("guided_backprop")
    build("vanilla")  # served from the cache: the plain entry is now the most recently used
    assert len(cache.entries(root)) == 2
    build("gradcam")  # a third entry: the guided one, least recently used, goes
    kept = {p for p, _, _ in cache.entries(root)}
    assert plain in kept and len(kept) == 2
    assert sum(size for _, size, _ in cache.entries(root)) <= int(2.5 * one)
    again = nxrt.Explainer(model)
    again.explain(X, "guided_backprop", target=1)
    assert again.stats()["graphs_built"] == 1  # it was evicted, so rebuilt


def test_cache_info_and_clear(tmp_path):
    env = {"NXRT_CACHE": str(tmp_path / "cache"), "PATH": ""}
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(path))
    script = f"import numpy as np, nxrt; nxrt.Explainer({str(path)!r}).explain(np.ones((1, 3, 8, 8), np.float32))"
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 0

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nxrt.cli", "cache", *args], capture_output=True, text=True,
                              env={**env, "NXRT_CACHE_MAX": "512M"})

    info = cli("info")
    assert info.returncode == 0 and f"cache: {tmp_path / 'cache'}" in info.stdout
    assert "entries: 1, " in info.stdout and "of 512 MiB" in info.stdout
    cleared = cli("clear")
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert "entries: 0, 0.0 MiB" in cli("info").stdout and not list((tmp_path / "cache").glob("*.onnx"))
