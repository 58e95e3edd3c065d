"""Small models and cases the tests build (plain functions with arguments; the fixtures that share
them across modules are in conftest.py)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nxrt.card import ModelCard


def tiny_classifier(opset=17, batch="N") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    fc = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "F")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "F"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 2])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


MODEL_GRID = (16, 16, 16)
IMAGE_GRID = (20, 14, 17)  # cropped along x, padded along y, cropped by one along z
CHANNELS = ["flair", "t1", "t1ce", "t2"]


def seg_model(path):
    """A tiny 3D segmenter: Conv3d 4->3 (k3, pad 1) + Relu, with a model card."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 4, 3, 3, 3)).astype(np.float32) * 0.3, "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["c"], pads=[1] * 6, name="conv1"),
         helper.make_node("Relu", ["c"], ["output"], name="relu")], "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, *MODEL_GRID])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, *MODEL_GRID])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(task="segmentation", layout="channels_first", channels=CHANNELS,
                     labels=["background", "core", "edema"], normalize="zscore")
    onnx.save_model(card.write(model), str(path))
    return path


def oblique_affine():
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.2, 2.5])  # oblique and anisotropic
    aff[:3, 3] = [-30.0, 12.5, 7.0]
    return aff


def write_case(folder, name, style="2021", data=None, affine=None, with_seg=True):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    affine = oblique_affine() if affine is None else affine
    data = rng.uniform(0.5, 2.0, IMAGE_GRID + (4,)).astype(np.float32) if data is None else data
    data[:2] = 0  # some background
    suffix = {"2021": ["_flair", "_t1", "_t1ce", "_t2", "_seg"], "2023": ["-t2f", "-t1n", "-t1c", "-t2w", "-seg"]}
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(4):
        img = nib.Nifti1Image(data[..., c], affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=2)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(folder / f"{name}{suffix[style][c]}.nii.gz"))
    if with_seg:
        seg = np.zeros(IMAGE_GRID, np.int16)
        seg[8:12, 5:9, 6:10] = 2
        seg[9:11, 6:8, 7:9] = 1
        nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{name}{suffix[style][4]}.nii.gz"))
    return data


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nxrt.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)




def install_plugin(folder, module: str, source: str, entry: str) -> str:
    """Build the one-module distribution `module` (its code `source`, registering `entry`, e.g.
    "mine = mod:Cls", under nxrt.methods) and pip-install it into `folder`/site, never into the
    venv; returns the site folder (put it on PYTHONPATH to see the plugin)."""
    src, site = folder / "src", folder / "site"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{module.replace("_", "-")}"\nversion = "0.0.1"\n\n'
        f'[project.entry-points."nxrt.methods"]\n{entry}\n')
    (src / f"{module}.py").write_text(source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(src)], check=True)
    return str(site)
