"""A 2D model on 3D cases (`--slice`): the chosen slice is explained, and every map is written in
the 3D image grid at that slice (zero elsewhere), equal to the Python API on the same 2D input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nxrt
from nxrt.card import ModelCard
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import Geometry
from tests.builders import CHANNELS, IMAGE_GRID, run_cli, seg_model, write_case

GRID_2D = (16, 12)


def seg_model_2d(path, layout="channels_first"):
    """Conv2d 4->3 (k3, pad 1) + Relu; channels_last wraps it in Transposes."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((3, 4, 3, 3)).astype(np.float32) * 0.3, "W")
    if layout == "channels_first":
        nodes = [helper.make_node("Conv", ["input", "W"], ["c"], pads=[1] * 4, name="conv1"),
                 helper.make_node("Relu", ["c"], ["output"], name="relu")]
        shapes = ([4, *GRID_2D], [3, *GRID_2D])
    else:
        nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["t", "W"], ["c"], pads=[1] * 4, name="conv1"),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Transpose", ["r"], ["output"], perm=[0, 2, 3, 1])]
        shapes = ([*GRID_2D, 4], [*GRID_2D, 3])
    graph = helper.make_graph(nodes, "seg2d",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shapes[0]])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *shapes[1]])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(task="segmentation", layout=layout, channels=CHANNELS, labels=["bg", "a", "b"],
                     normalize="zscore")
    onnx.save_model(card.write(model), str(path))
    return path


def _expected_slice(model, case_dir, axis, index, layout):
    """The oracle: the slice cut, z-scored with whole-volume statistics, centre cropped/padded by
    hand, explained by the Python API, and placed back at the slice."""
    ex = nxrt.Explainer(model)
    case = load_case(case_dir, channels=CHANNELS)
    plane = np.take(case.data, index, axis=axis)  # [a, b, C]
    brains = [case.data[..., c][case.data[..., c] != 0].astype(np.float64) for c in range(4)]
    stats = [(b.mean(), b.std()) for b in brains]
    plane = np.stack([np.where(plane[..., c] != 0, (plane[..., c] - np.float32(m)) / np.float32(s), 0)
                      for c, (m, s) in enumerate(stats)], axis=-1).astype(np.float32)
    g2 = Geometry.centred(plane.shape[:2], GRID_2D)
    x = g2.to_model(plane)[None]  # [1, H, W, C]
    if layout == "channels_first":
        x = np.moveaxis(x, -1, 1)
    attr = ex.explain(x, "vanilla")[0]
    attr = attr if layout == "channels_last" else np.moveaxis(attr, 0, -1)
    want = np.zeros(IMAGE_GRID + (4,), np.float32)
    index_3d = [slice(None)] * 3
    index_3d[axis] = index
    want[tuple(index_3d)] = g2.to_image(attr)
    return want


@pytest.mark.parametrize(("layout", "spec", "axis", "index"), [
    ("channels_first", "axial:9", 2, 9), ("channels_last", "coronal:5", 1, 5),
    ("channels_first", None, 2, 8),  # default: axial through the tumour's centre (z 6..9 -> 7.5 -> 8)
])
def test_2d_model_explains_one_slice_of_a_3d_case(tmp_path, layout, spec, axis, index):
    model = seg_model_2d(tmp_path / "seg2d.onnx", layout)
    write_case(tmp_path / "c", "c")
    args = ["--slice", spec] if spec else []
    res = run_cli("explain", model, tmp_path / "c", "-m", "vanilla", "-m", "gradcam", *args, "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    d = tmp_path / "out" / "c"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["slice"] == {"orientation": ["sagittal", "coronal", "axial"][axis], "voxel_axis": axis,
                                "index": index}
    raw = nib.load(str(d / "vanilla.nii.gz"))
    assert raw.shape == IMAGE_GRID + (4,)
    np.testing.assert_allclose(raw.affine, load_case(tmp_path / "c").affine)
    got = np.asarray(raw.dataobj)
    np.testing.assert_allclose(got, _expected_slice(model, tmp_path / "c", axis, index, layout), rtol=1e-5,
                               atol=1e-7)
    off = np.ones(IMAGE_GRID, bool)
    off[tuple(index if a == axis else slice(None) for a in range(3))] = False
    # the display map's 99th percentile is the slice's (DESIGN.md's clip, on what was explained)
    magnitude = np.abs(got[~off]).sum(axis=-1, dtype=np.float64)
    top = np.sort(magnitude)[int(round(0.99 * (magnitude.size - 1)))]
    shown = np.asarray(nib.load(str(d / "vanilla_map.nii.gz")).dataobj)[~off]
    np.testing.assert_allclose(shown, np.minimum(magnitude, top) / top, rtol=1e-5, atol=1e-7)
    from PIL import Image

    from nxrt.imaging import figures

    height = Image.open(d / "overview.png").size[1]
    assert figures.PANEL < height < 2 * figures.PANEL  # one row: the explained slice (the others would show one line)
    for name in ("vanilla_map", "gradcam_map", "prediction"):
        vol = np.asarray(nib.load(str(d / f"{name}.nii.gz")).dataobj)
        assert vol.shape == IMAGE_GRID and not vol[off].any() and vol[~off].any(), name
    # report.html opens on the explained slice: its start voxel lies on that slice of the file
    import re

    text = (d / "report.html").read_text()
    data = json.loads(re.search(r'<script id="nxrt-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    voxel = [0, 0, 0, 1]
    voxel[data["start"]["axis"]] = data["start"]["index"]
    assert round(float(np.dot(data["toFile"][axis], voxel))) == index


def test_slice_errors_are_one_line(tmp_path):
    model2d = seg_model_2d(tmp_path / "seg2d.onnx")
    model3d = seg_model(tmp_path / "seg3d.onnx")
    write_case(tmp_path / "c", "c")
    for model, spec, words in [(model3d, "axial:3", "drop --slice"), (model2d, "oblique", "axial, coronal or sagittal"),
                               (model2d, "axial:17", "17 axial slices (0..16)"), (model2d, "axial:x", "an integer")]:
        res = run_cli("explain", model, tmp_path / "c", "--slice", spec, "-o", tmp_path / "out")
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "out" / "c").exists()


def test_layers_figure_of_a_2d_model(tmp_path):
    model = seg_model_2d(tmp_path / "seg2d.onnx")
    write_case(tmp_path / "c", "c")
    res = run_cli("layers", model, tmp_path / "c", "--slice", "coronal:6", "-o", tmp_path / "l.png")
    assert res.returncode == 0, res.stderr
    from PIL import Image

    assert Image.open(tmp_path / "l.png").size[0] > 150


def test_2d_model_without_static_size_takes_the_slice_as_it_is(tmp_path):
    """A 2D model with symbolic height and width (and no nxrt.spatial_shape): the whole slice."""
    path = seg_model_2d(tmp_path / "seg2d.onnx")
    model = onnx.load(str(path))
    for vi in (model.graph.input[0], model.graph.output[0]):
        for d, name in zip(vi.type.tensor_type.shape.dim[2:], ("H", "W"), strict=True):
            d.Clear()
            d.dim_param = name
    onnx.save(model, str(path))
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "--slice", "sagittal:4", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    assert summary["model_input_shape"] == [1, 4, IMAGE_GRID[1], IMAGE_GRID[2]]
    vol = np.asarray(nib.load(str(tmp_path / "out" / "c" / "vanilla_map.nii.gz")).dataobj)
    assert vol[4].any() and not np.delete(vol, 4, axis=0).any()
