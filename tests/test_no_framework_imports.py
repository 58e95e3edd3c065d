"""nxrt/ and plugins/ must run where no deep-learning framework is installed."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = r'''
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "tensorflow", "keras", "tf2onnx", "jax", "monai", "captum"}:
            raise ImportError("blocked framework import: " + name)
        return None
sys.meta_path.insert(0, Block())
import pkgutil, importlib, nxrt, nxrt.plugins
for pkg in (nxrt, nxrt.plugins):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.startswith("nxrt.converters"):
            importlib.import_module(mod.name)
import numpy as np, onnx
from onnx import helper, TensorProto
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
nxrt.augment(m)
from nxrt.cli import main
print("ok", sorted(k for k in sys.modules if k.split(".")[0] in {"torch", "tensorflow", "keras"}))
'''


def test_runtime_imports_without_frameworks():
    res = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok []"


FIGURES_WITHOUT_MATPLOTLIB = r'''
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
import numpy as np
from pathlib import Path
from nxrt.imaging import figures
out = Path(sys.argv[1])
scan = np.random.default_rng(0).uniform(1, 2, (20, 24, 16)).astype(np.float32)
figures.overview(out / "o.png", scan, {"m": scan / 2}, (10, 12, 8), title="t", contour=scan > 1.9)
figures.layer_grid(out / "l.png", scan, [scan / 2], ["conv"], (10, 12, 8))
print("ok", (out / "o.png").stat().st_size > 1000, (out / "l.png").stat().st_size > 1000)
'''


def test_figures_need_no_matplotlib(tmp_path):
    """matplotlib is a test-only dependency: the pictures are drawn with Pillow."""
    res = subprocess.run([sys.executable, "-c", FIGURES_WITHOUT_MATPLOTLIB, str(tmp_path)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok True True"


def test_lazy_package_names():
    """`import nxrt.cli` loads no onnx (the CLI reads the case meanwhile); the public names and the
    submodules are still there on first use."""
    code = ("import sys, nxrt.cli; print('onnx' in sys.modules); import nxrt; "
            "print(sorted(nxrt._EXPORTS) == nxrt.__all__, nxrt.Explainer.__name__, nxrt.postprocess.__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True", "Explainer", "nxrt.postprocess"]
